"""Label each passage relevant, distracting or irrelevant, and apply a policy to distracting ones.

relevant: relevance >= threshold. distracting: not relevant, yet the scorer would answer from it
(DE >= de_threshold; "hard distractor" band of Amiraz et al.). irrelevant: the rest. DE alone cannot
separate relevant from distracting passages (both make the model answer), so it needs relevance.
When the scorer LM fails the abstention check, DE is not computed (it would be noise) and the stage
says so in its stats; passages are then only relevant or irrelevant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState

if TYPE_CHECKING:
    from ragctx.adapters import ReaderAdapter
    from ragctx.models import LanguageModel

# Chosen on NQ-20 dev by `benchmarks/label_thresholds.py --n 30`: the threshold that maximises F1 of
# "holds the answer" over 600 passages. Embedding cosine: F1 0.85 (gold ranked first 90%); query
# likelihood under SmolLM2-135M: F1 0.40 (gold first 80%).
DEFAULT_RELEVANCE_THRESHOLD = {"lm": -2.78, "embedding": 0.59}
DEFAULT_DE_THRESHOLD = 0.8  # without a reader adapter (whose card holds its own, calibrated)


@dataclass
class LabelStage:
    lm: LanguageModel
    embedder: Any
    cache_dir: Path
    relevance_source: Literal["lm", "embedding"] = "embedding"
    relevance_threshold: float | None = None
    de_threshold: float = DEFAULT_DE_THRESHOLD
    policy: Literal["keep", "drop", "demote"] = "keep"
    name: str = "label"
    adapter: ReaderAdapter | None = None

    def run(self, state: PipelineState) -> None:
        kept = state.kept()
        if not kept:
            return
        from ragctx.scoring.abstention import check_abstention
        from ragctx.scoring.distraction import DistractionScorer
        from ragctx.scoring.relevance import QueryLikelihoodScorer, embedding_relevance

        passages = [p.passage for p in kept]
        if self.relevance_source == "lm":
            relevance = QueryLikelihoodScorer(self.lm).score(state.question, passages)
        else:
            relevance = embedding_relevance(self.embedder, state.question, passages)
        threshold = self.relevance_threshold
        if threshold is None:
            threshold = DEFAULT_RELEVANCE_THRESHOLD[self.relevance_source]
        check = check_abstention(self.lm, self.cache_dir, adapter=self.adapter)
        de: list[float | None]
        if check.follows_abstention:
            de = list(DistractionScorer(self.lm, adapter=self.adapter).score(state.question, passages))
        else:
            de = [None] * len(kept)
            state.notes["distracting_effect"] = (
                f"not computed: {self.lm.name} does not follow the abstention instruction "
                f"(mean DE {check.mean_de_unrelated:.2f} on unrelated passages)"
            )
        for p, rel, d in zip(kept, relevance, de, strict=True):
            p.scores["relevance"] = rel
            if d is not None:
                p.scores["distracting_effect"] = d
            if rel >= threshold:
                p.label = "relevant"
            elif d is not None and d >= self.de_threshold:
                p.label = "distracting"
            else:
                p.label = "irrelevant"
        distracting = [p for p in kept if p.label == "distracting"]
        state.notes["labels"] = {x: sum(p.label == x for p in kept) for x in ("relevant", "distracting", "irrelevant")}
        if self.policy == "drop":
            for p in distracting:
                p.spans = []
        elif self.policy == "demote":
            rest = [p for p in state.passages if p.label != "distracting"]
            state.passages = rest + distracting


class LabelSettings(MethodSettings):
    relevance_source: Literal["lm", "embedding"] = Field(
        default="embedding",
        description="Relevance: `lm` (query likelihood under the scorer) or `embedding` (cosine).",
    )
    relevance_threshold: float | None = Field(
        default=None, description="Relevance at or above which a passage is `relevant`; none = the dev-tuned default."
    )
    de_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Distracting effect at or above which a non-relevant passage is `distracting`; none = the "
        "threshold calibrated with the reader adapter on NQ-20 training questions (0.8 without an adapter).",
    )
    distractor_policy: Literal["keep", "drop", "demote"] = Field(
        default="keep", description="What happens to distracting passages: keep, drop, or rank them last."
    )


def build(ctx: BuildContext, cfg: LabelSettings) -> LabelStage:
    embedder = ctx.models.embedder() if cfg.relevance_source == "embedding" else None
    lm = ctx.models.scorer()
    adapter = ctx.models.reader_adapter(lm)
    de_threshold = cfg.de_threshold
    if de_threshold is None:
        calibrated = adapter.info.training.get("de_threshold") if adapter is not None else None
        de_threshold = float(calibrated) if calibrated is not None else DEFAULT_DE_THRESHOLD
    return LabelStage(
        lm,
        embedder,
        ctx.settings.resolved_cache_dir(),
        cfg.relevance_source,
        cfg.relevance_threshold,
        de_threshold,
        cfg.distractor_policy,
        adapter=adapter,
    )


METHOD = Method(
    "label",
    "labels passages relevant / distracting / irrelevant (relevance: embedding cosine or query likelihood; "
    "distracting effect); policy keep, drop or demote (rank last)",
    "label",
    build,
    LabelSettings,
)
