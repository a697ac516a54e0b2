"""`attnrank`: AttnRank (Yi et al. 2025).

The model's positional profile (reordering/calibration.py) says which slots get most attention; the most
relevant passage (the current order is taken as the relevance order) goes to the most attended slot, and
so on. No model call at query time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragctx.method import BuildContext, Method, NoSettings
from ragctx.state import PipelineState

if TYPE_CHECKING:
    from ragctx.models import LanguageModel


@dataclass
class AttnRankStage:
    lm: LanguageModel
    cache_dir: Path
    name: str = "attnrank"

    def run(self, state: PipelineState) -> None:
        kept = state.kept()
        if len(kept) < 2:
            return
        from ragctx.reordering.calibration import load_attnrank

        profile = load_attnrank(self.cache_dir, self.lm, len(kept))
        slots: list[int | None] = [None] * len(kept)
        for rank, slot in enumerate(profile.position_order):
            slots[slot] = rank
        placed = [kept[r] for r in slots if r is not None]
        state.passages = placed + [p for p in state.passages if not p.spans]
        state.notes["layer"] = profile.layer
        state.notes["position_order"] = profile.position_order


def build(ctx: BuildContext, cfg: NoSettings) -> AttnRankStage:
    return AttnRankStage(ctx.models.reader(), ctx.settings.resolved_cache_dir())


METHOD = Method(
    "attnrank",
    "AttnRank: most relevant passage (current order) into the reader's most attended slot, from "
    "`ragctx calibrate attnrank`; no model call",
    "order",
    build,
)
