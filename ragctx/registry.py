"""Stage names and how each is built. Later methods register here, and only here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragctx.compressors.baselines import (
    EmbeddingPassageFilter,
    RandomSentenceDrop,
    SentenceBudget,
    Truncation,
)
from ragctx.compressors.selection import CompressStage, ForceKeep, UnitScorer
from ragctx.reordering.orders import ORDER_NAMES, ReorderStage

if TYPE_CHECKING:
    from ragctx.cache import SegmentCache
    from ragctx.config import Settings
    from ragctx.indexes.base import Retriever
    from ragctx.models import ModelRegistry
    from ragctx.pipeline.base import Stage
    from ragctx.segmentation import TokenCounter


def _ehpc(f: StageFactory) -> UnitScorer:
    from ragctx.compressors.ehpc import EHPCScorer
    from ragctx.compressors.evaluator_heads import load_heads

    lm = f.models.scorer()
    s = f.settings
    segments = None
    if s.segment_kv and f.segment_cache is not None:
        from ragctx.scoring.segment_kv import SegmentKVCache

        segments = SegmentKVCache(lm, f.segment_cache)
    heads = load_heads(s.resolved_cache_dir(), lm)
    return EHPCScorer(
        lm,
        heads,
        s.ehpc_granularity,
        s.ehpc_pool,
        s.ehpc_chunk_tokens,
        segments,
        unit_score=s.ehpc_unit_score,
        passage_prior=s.ehpc_passage_prior,
    )


def _exit(f: StageFactory) -> UnitScorer:
    from ragctx.compressors.exit import ExitCrossEncoderScorer, ExitLMScorer

    if f.settings.exit_model:
        return ExitCrossEncoderScorer(f.models.exit_classifier(f.settings.exit_model))
    return ExitLMScorer(f.models.scorer())


# Compression methods: name -> how to build its scorer. Selection is shared (CompressStage).
COMPRESSORS: dict[str, Callable[[StageFactory], UnitScorer]] = {
    "budget": lambda f: SentenceBudget(),
    "truncate": lambda f: Truncation(),
    "random-drop": lambda f: RandomSentenceDrop(),
    "embed-passages": lambda f: EmbeddingPassageFilter(
        f.models.embedder(), floor=f.settings.relevance_floor if f.settings.relevance_floor > -1 else None
    ),
    "ehpc": _ehpc,
    "exit": _exit,
}

STAGE_HELP: dict[str, str] = {
    "retrieve": "top-k passages from the index (skipped when the caller gives passages)",
    "dedup": "drop near-duplicate passages (word 3-shingle Jaccard >= dedup_threshold)",
    "reorder-lim-langchain": "lost in the middle, LangChain's rule (input order = relevance)",
    "reorder-lim-llamaindex": "lost in the middle, LlamaIndex's rule (sorts by retrieval score)",
    "reorder-inverse": "reverse the order: the best passage ends next to the question",
    "reorder-shuffle": "seeded random order",
    "label": "label passages relevant / distracting / irrelevant (relevance + distracting effect); policy",
    "attention-sort": "attention sorting: most-attended passage last, next to the question (k rounds)",
    "attnrank": "AttnRank: most relevant passage into the model's most attended slot (calibrated profile)",
    "budget": "keep whole sentences in order until the budget is spent",
    "truncate": "keep the first tokens (cuts mid-sentence)",
    "random-drop": "keep random sentences within the budget (seeded)",
    "embed-passages": "keep whole passages by embedding cosine to the question within the budget, best first; "
    "none below relevance_floor",
    "ehpc": "evaluator-head token compression: question attention through calibrated early heads",
    "exit": "EXIT: keep sentences the classifier finds useful (P(Yes) >= tau, default 0.5) or the best in budget",
}


# Methods whose output is not text but embeddings that only a local target model can read.
SOFT_METHODS: dict[str, str] = {
    "compllm": "CompLLM: each 20-token segment becomes 10 concept embeddings the local reader reads (soft prompt)",
}


def soft_method_error(method: str) -> str:
    return (
        f"method {method!r} turns the context into embeddings that only a local model can read, not text: "
        "use it to answer with the local reader (`ragctx query --answer`, or /v1/chat/completions without an upstream)"
    )


def known_stage_names() -> set[str]:
    return set(STAGE_HELP)


def check_stage_names(names: list[str]) -> None:
    """Settings name stages as plain strings (config sits below the registry); the engine checks them here."""
    unknown = [s for s in names if s not in known_stage_names()]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(known_stage_names())}")


def compression_methods() -> list[str]:
    return ["none", *COMPRESSORS]


def all_methods() -> list[str]:
    """Text methods and soft-prompt methods."""
    return [*compression_methods(), *SOFT_METHODS]


def text_method(method: str | None) -> str | None:
    """The text pipeline's method for `method`: soft methods read the uncompressed passages."""
    return "none" if method in SOFT_METHODS else method


def with_method(stages: list[str], method: str | None) -> list[str]:
    """Replace the compression stage(s) of `stages` by `method` (`none` removes them).

    `method` may chain compressors with `+` (e.g. `embed-passages+truncate`): all but the last keep a
    looser budget (see ContextEngine.pipeline) and the last one meets it.
    """
    if method is None:
        return list(stages)
    if method in SOFT_METHODS:
        raise ValueError(soft_method_error(method))
    chain = [] if method == "none" else method.split("+")
    unknown = [m for m in chain if m not in COMPRESSORS]
    if unknown or not (chain or method == "none"):
        raise ValueError(f"unknown method {method!r}; known: {compression_methods()} (chain with +)")
    return [s for s in stages if s not in COMPRESSORS] + chain


@dataclass
class StageFactory:
    settings: Settings
    counter: TokenCounter
    retriever: Retriever | None
    models: ModelRegistry
    segment_cache: SegmentCache | None = None

    def build(self, name: str) -> Stage:
        from ragctx.pipeline.stages import DedupStage, RetrieveStage

        if name == "retrieve":
            return RetrieveStage(self.retriever, self.settings.top_k)
        if name == "dedup":
            return DedupStage(self.settings.dedup_threshold)
        if name in ORDER_NAMES:
            return ReorderStage(name)
        s = self.settings
        if name == "label":
            from ragctx.scoring.labels import LabelStage

            embedder = self.models.embedder() if s.relevance_source == "embedding" else None
            return LabelStage(
                self.models.scorer(),
                embedder,
                s.resolved_cache_dir(),
                s.relevance_source,
                s.relevance_threshold,
                s.de_threshold,
                s.distractor_policy,
            )
        if name == "attention-sort":
            from ragctx.reordering.attention import AttentionSortStage

            layers = tuple(s.attention_layers) if s.attention_layers else None
            return AttentionSortStage(
                self.models.reader(),
                s.attention_sort_rounds,
                layers,
                s.attention_aggregate,
                s.attention_debias,
                s.resolved_cache_dir(),
            )
        if name == "attnrank":
            from ragctx.reordering.attention import AttnRankStage

            return AttnRankStage(self.models.reader(), s.resolved_cache_dir())
        if name in COMPRESSORS:
            force = ForceKeep(s.force_keep_numbers, s.force_keep_first_sentence, tuple(s.force_keep_strings))
            return CompressStage(COMPRESSORS[name](self), self.counter, force=force)
        raise ValueError(f"unknown stage {name!r}; known: {sorted(known_stage_names())}")
