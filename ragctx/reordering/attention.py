"""Model-aware orders: attention sorting (Peysakhovich & Lerer 2023) and AttnRank (Yi et al. 2025).

Attention sorting: one prefill of the reader prompt in the current order; the attention the last prompt
position pays to each passage's body (selected layers, all heads; sum or per-token mean); a stable sort
ascending puts the most-attended passage last, next to the question; repeat for k rounds.

AttnRank: the model's positional profile (reordering/calibration.py) says which slots get most attention; the
most relevant passage (the current order is taken as the relevance order) goes to the most attended
slot, and so on. No model call at query time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ragctx.models import LanguageModel
from ragctx.reordering.calibration import load_attention_bias, load_attnrank
from ragctx.reordering.prompt import slot_attention
from ragctx.state import PipelineState


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


@dataclass
class AttnRankStage:
    lm: LanguageModel
    cache_dir: Path
    name: str = "attnrank"

    def run(self, state: PipelineState) -> None:
        kept = state.kept()
        if len(kept) < 2:
            return
        profile = load_attnrank(self.cache_dir, self.lm, len(kept))
        slots: list[int | None] = [None] * len(kept)
        for rank, slot in enumerate(profile.position_order):
            slots[slot] = rank
        placed = [kept[r] for r in slots if r is not None]
        state.passages = placed + [p for p in state.passages if not p.spans]
        state.notes["layer"] = profile.layer
        state.notes["position_order"] = profile.position_order
