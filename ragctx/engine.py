"""One place that turns settings into a running pipeline; the CLI, the API and LangChain all use it."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

from ragctx.compressors.selection import CompressStage
from ragctx.config import Settings, load_settings
from ragctx.models import ModelRegistry
from ragctx.pipeline.base import Pipeline
from ragctx.pipeline.registry import StageFactory, with_method
from ragctx.pipeline.state import Budget
from ragctx.segmentation import TokenCounter
from ragctx.types import CompressedContext, Passage

if TYPE_CHECKING:
    from ragctx.cache import SegmentCache
    from ragctx.indexes.base import Retriever
    from ragctx.indexes.faiss_index import FaissIndex

log = logging.getLogger(__name__)


class ContextEngine:
    """Settings + models (loaded once) + the index, building pipelines per request."""

    def __init__(
        self,
        settings: Settings | None = None,
        registry: ModelRegistry | None = None,
        retriever: Retriever | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.models = registry or ModelRegistry(self.settings)
        self._retriever = retriever

    @cached_property
    def counter(self) -> TokenCounter:
        tok = self.models.target_tokenizer()
        name = self.settings.target_tokenizer
        if name == "default":
            name = f"scorer:{self.settings.scorer_model}"
        return TokenCounter(tok, name)

    @cached_property
    def segment_cache(self) -> SegmentCache:
        """Shared by every pipeline this engine builds: Redis if configured, else in process."""
        from ragctx.cache import open_segment_cache

        return open_segment_cache(self.settings)

    def open_index(self) -> FaissIndex:
        from ragctx.indexes.faiss_index import FaissIndex

        return FaissIndex.open(self.settings.resolved_index_dir(), self.models.embedder())

    @property
    def retriever(self) -> Retriever | None:
        if self._retriever is None and (self.settings.resolved_index_dir() / "manifest.json").exists():
            self._retriever = self.open_index()
        return self._retriever

    def pipeline(self, method: str | None = None, stages: list[str] | None = None) -> Pipeline:
        names = with_method(stages if stages is not None else self.settings.stages, method)
        needs_retriever = "retrieve" in names
        retriever = self.retriever if needs_retriever else None
        factory = StageFactory(self.settings, self.counter, retriever, self.models, self.segment_cache)
        built = [factory.build(n) for n in names]
        compressors = [s for s in built if isinstance(s, CompressStage)]
        for pre in compressors[:-1]:
            pre.budget_scale = self.settings.prefilter_scale
        return Pipeline(built, self.counter, self.counter.name)

    def default_budget(self) -> Budget:
        return Budget(tokens=self.settings.budget_tokens, rate=self.settings.rate)

    def run(
        self,
        question: str,
        passages: list[Passage] | None = None,
        method: str | None = None,
        budget: Budget | None = None,
        stages: list[str] | None = None,
    ) -> CompressedContext:
        return self.pipeline(method, stages).run(
            question, passages, budget or self.default_budget(), seed=self.settings.seed
        )
