"""What one running service holds: the engine and its models, limits, metrics, the batcher, the upstream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.to_thread
import httpx
import numpy as np
import torch

from ragctx.api.batching import MicroBatcher, ThreadBatcher
from ragctx.api.errors import ApiError
from ragctx.api.limits import ConcurrencyLimiter, Slot, time_limit
from ragctx.api.metrics import ServiceMetrics
from ragctx.engine import ContextEngine
from ragctx.models import LanguageModel
from ragctx.reader import LocalReader
from ragctx.scoring.prefix_batch import logits_for_calls, routed_through
from ragctx.settings import Settings
from ragctx.state import Budget
from ragctx.types import CompressedContext, Passage

if TYPE_CHECKING:
    from ragctx.indexes.faiss_index import AddResult

log = logging.getLogger(__name__)

# Prompts per forward of the scorer-LM batcher: larger matrices than one request's chunks, still small
# enough that the padded prefix caches of a batch stay a few hundred MB.
LM_BATCH_ROWS = 32

LMCall = tuple[LanguageModel, list[list[int]]]


@dataclass
class IngestResult:
    added: int
    skipped_duplicates: list[str]
    count: int
    created: bool


@dataclass
class Service:
    settings: Settings
    engine: ContextEngine
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    limiter: ConcurrencyLimiter = field(init=False)
    embed_batcher: MicroBatcher[str, np.ndarray] = field(init=False)
    # Scorer-LM calls of concurrent pipelines (worker threads), merged (`lm_batching`); None = direct calls.
    lm_batcher: ThreadBatcher[LMCall, torch.Tensor] | None = field(init=False, default=None)
    upstream: httpx.AsyncClient | None = None
    reader: LocalReader | None = None
    # Unix time the service was made: the `created` of the local model in /v1/models.
    started_at: int = field(default_factory=lambda: int(time.time()))
    # Index writes copy the index and swap it in: two at once would lose one of them.
    _index_write_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.limiter = ConcurrencyLimiter(self.settings.max_concurrency)
        self.metrics.watch_segment_cache(lambda: self.engine.segment_cache)
        self.embed_batcher = MicroBatcher(
            self._embed,
            max_batch_size=self.settings.batch_max_size,
            max_wait_ms=self.settings.batch_max_wait_ms,
            on_batch=self.metrics.batch_size.labels("embedder").observe,
        )
        if self.settings.lm_batching:
            self.lm_batcher = ThreadBatcher(
                lambda calls: logits_for_calls(calls, LM_BATCH_ROWS),
                max_batch_size=self.settings.batch_max_size,
                max_wait_ms=self.settings.batch_max_wait_ms,
                on_batch=self.metrics.batch_size.labels("scorer_lm").observe,
                name="scorer-lm-batcher",
            )

    # ---- life cycle ---------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Everything a request needs, loaded now rather than on the first request (blocking)."""
        self.engine.models.embedder()
        _ = self.engine.counter  # the target tokenizer
        _ = self.engine.retriever  # opens the index if there is one
        if self.settings.upstream_base_url is None:
            self.reader = self.engine.local_reader()

    async def start(self) -> None:
        await self.embed_batcher.start()
        if self.lm_batcher is not None:
            self.lm_batcher.start()
        s = self.settings
        if s.upstream_base_url:
            headers = {"Authorization": f"Bearer {s.upstream_api_key.get_secret_value()}"} if s.upstream_api_key else {}
            self.upstream = httpx.AsyncClient(
                base_url=s.upstream_base_url,
                headers=headers,
                timeout=httpx.Timeout(s.request_timeout_s, connect=min(10.0, s.request_timeout_s)),
            )

    async def stop(self) -> None:
        await self.embed_batcher.close()
        if self.lm_batcher is not None:
            await anyio.to_thread.run_sync(self.lm_batcher.close)  # waits for the batch running
        if self.upstream is not None:
            await self.upstream.aclose()

    # ---- admission -----------------------------------------------------------------------------------

    async def admit(self) -> Slot:
        """A slot of `max_concurrency` (waiting up to `queue_wait_s` for one), or 429 with Retry-After;
        release it when the request is done. Its work stops at the request's time limit."""
        try:
            slot = await self.limiter.admit(self.settings.queue_wait_s)
        except ApiError:
            self.metrics.rejections.labels("busy").inc()
            raise
        slot.deadline_at = time.monotonic() + self.settings.request_timeout_s
        return slot

    def deadline(self) -> AbstractContextManager[None]:
        """The request's time limit: past `request_timeout_s` the work inside is cancelled, and 504."""
        return time_limit(self.settings.request_timeout_s, self.metrics.rejections.labels("timeout").inc)

    # ---- work (blocking: called in worker threads) --------------------------------------------------

    def build_context(
        self,
        question: str,
        passages: list[Passage] | None,
        budget: Budget,
        method: str | None,
        stages: list[str] | None,
    ) -> CompressedContext:
        """The pipeline over `passages`, or over what the index retrieves when there are none."""
        if passages is None and self.engine.retriever is None:
            raise ApiError(
                409,
                "no passages were given and the service has no index yet; POST /v1/documents first",
                "no_index",
            )
        try:
            with self._lm_calls_batched():
                return self.engine.run(question, passages, method=method, budget=budget, stages=stages)
        except ValueError as exc:  # bad combinations the request models cannot see (duplicate ids, ...)
            raise ApiError(400, str(exc)) from None

    @contextmanager
    def _lm_calls_batched(self) -> Iterator[None]:
        """The pipeline's scorer-LM calls (this thread) join those of concurrent requests."""
        batcher = self.lm_batcher
        if batcher is None:
            yield
            return
        with batcher.participant(), routed_through(lambda lm, prompts: batcher.submit((lm, prompts))):
            yield

    def ingest(self, passages: list[Passage]) -> IngestResult:
        from ragctx.indexes.faiss_index import FaissIndex

        with self._index_write_lock:
            retriever = self.engine.retriever
            if retriever is None:
                unique, repeated = _first_of_each_id(passages)
                s = self.settings
                built = FaissIndex.build(
                    s.resolved_index_dir(),
                    unique,
                    self.engine.models.embedder(),
                    embedder_name=s.embedder,
                    index_type=s.index_type,
                    ivf_nlist=s.ivf_nlist,
                    hnsw_m=s.hnsw_m,
                )
                count = len(built)
                built.close()  # the engine opens the index itself on its next use
                return IngestResult(len(unique), repeated, count, created=True)
            if not isinstance(retriever, FaissIndex):
                raise ApiError(409, "this service retrieves from a retriever that does not accept documents")
            result: AddResult = retriever.add(passages)
            return IngestResult(result.added, result.skipped_duplicates, len(retriever), created=False)

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        vectors = self.engine.models.embedder().encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return list(np.asarray(vectors, dtype=np.float32))

    def readiness(self) -> tuple[dict[str, str], list[str]]:
        """Each dependency's state, and the names of those that keep the service from being ready."""
        loaded = set(self.engine.models.load_ms)
        needed = {"embedder", "target_tokenizer"}
        if self.settings.upstream_base_url is None:
            needed.add("reader" if self.settings.reader_model != self.settings.scorer_model else "scorer")
        missing = sorted(needed - loaded)
        checks = {"models": "loaded" if not missing else f"not loaded: {', '.join(missing)}"}
        failing = ["models"] if missing else []
        try:
            retriever = self.engine.retriever
            checks["index"] = "absent" if retriever is None else f"open ({_size_of(retriever)} passages)"
        except (OSError, ValueError) as exc:
            checks["index"] = f"error: {exc}"
            failing.append("index")
        # Redis only caches: without it requests are computed (slower), so it never makes us unready.
        checks["redis"] = _redis_status(self.settings.redis_url)
        if checks["redis"] not in ("ok", "not configured"):
            checks["redis"] += " (computing without the segment cache)"
        return checks, failing


def _first_of_each_id(passages: list[Passage]) -> tuple[list[Passage], list[str]]:
    seen: set[str] = set()
    unique: list[Passage] = []
    repeated: list[str] = []
    for p in passages:
        if p.id in seen:
            repeated.append(p.id)
        else:
            seen.add(p.id)
            unique.append(p)
    return unique, repeated


def _size_of(retriever: object) -> str:
    try:
        return str(len(retriever))  # type: ignore[arg-type]
    except TypeError:
        return "?"


def _redis_status(url: str | None) -> str:
    if not url:
        return "not configured"
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"unreachable: {exc}"
    return "ok"
