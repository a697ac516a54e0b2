"""`attention-sort`: attention sorting (Peysakhovich & Lerer 2023).

One prefill of the reader prompt in the current order; the attention the last prompt position pays to
each passage's body (selected layers, all heads; sum or per-token mean); a stable sort ascending puts the
most-attended passage last, next to the question; repeat for k rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState

if TYPE_CHECKING:
    from ragctx.models import LanguageModel


class AttentionSortSettings(MethodSettings):
    rounds: int = Field(default=1, ge=1, le=10, description="Rounds of attention sorting.")
    layers: list[int] | None = Field(default=None, description="Layers whose attention sorts passages; none = all.")
    debias: bool = Field(
        default=False,
        description="Subtract each slot's positional bias first (`ragctx calibrate attention-bias`).",
    )
    aggregate: Literal["sum", "mean"] = Field(
        default="sum", description="Passage attention: total mass (`sum`) or per-token mean (`mean`)."
    )


@dataclass
class AttentionSortStage:
    lm: LanguageModel
    rounds: int = 1
    layers: tuple[int, ...] | None = None
    aggregate: Literal["sum", "mean"] = "sum"
    # Positional debiasing (Found in the Middle): subtract the attention a content-free passage gets at
    # the same slot, calibrated by `ragctx calibrate attention-bias`.
    debias: bool = False
    cache_dir: Path | None = None
    name: str = "attention-sort"

    def run(self, state: PipelineState) -> None:
        from ragctx.reordering.calibration import load_attention_bias
        from ragctx.reordering.prompt import slot_attention

        dropped = [p for p in state.passages if not p.spans]
        rounds = 0
        for _ in range(self.rounds):
            kept = state.kept()
            if len(kept) < 2:
                break
            scores = slot_attention(self.lm, state.question, kept, self.layers, self.aggregate)
            if self.debias:
                assert self.cache_dir is not None
                bias = load_attention_bias(self.cache_dir, self.lm, len(kept), self.layers, self.aggregate).bias
                for p, raw in zip(kept, scores, strict=True):
                    p.scores["attention_raw"] = raw
                scores = [x - b for x, b in zip(scores, bias, strict=True)]
            for p, s in zip(kept, scores, strict=True):
                p.scores["attention"] = s
            # sorted() is stable: ties keep the previous relative order.
            order = sorted(range(len(kept)), key=lambda i: scores[i])
            state.passages = [kept[i] for i in order] + dropped
            rounds += 1
        state.notes["rounds"] = rounds


def build(ctx: BuildContext, cfg: AttentionSortSettings) -> AttentionSortStage:
    layers = tuple(cfg.layers) if cfg.layers else None
    return AttentionSortStage(
        ctx.models.reader(), cfg.rounds, layers, cfg.aggregate, cfg.debias, ctx.settings.resolved_cache_dir()
    )


METHOD = Method(
    "attention-sort",
    "attention sorting: one prefill of the reader prompt, passages sorted by the attention the last position pays "
    "them, most attended last; `rounds` rounds; with `debias` each slot's attention to a content-free passage is "
    "subtracted first",
    "order",
    build,
    AttentionSortSettings,
)
