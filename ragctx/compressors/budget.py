"""`budget`: keeps whole sentences in the current passage order until the budget is spent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragctx.compressors.selection import Granularity, Unit, in_order
from ragctx.method import BuildContext, Method, NoSettings
from ragctx.state import PipelineState


@dataclass
class SentenceBudget:
    name: str = "budget"
    granularity: Granularity = "sentence"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        return in_order(units)


def build(ctx: BuildContext, cfg: NoSettings) -> SentenceBudget:
    return SentenceBudget()


METHOD = Method("budget", "keeps whole sentences in the current order until the budget is spent", "compressor", build)
