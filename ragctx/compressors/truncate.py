"""`truncate`: keeps the first tokens of the context, the usual baseline (cuts mid-sentence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragctx.compressors.selection import Granularity, Unit, in_order
from ragctx.method import BuildContext, Method, NoSettings
from ragctx.state import PipelineState


@dataclass
class Truncation:
    name: str = "truncate"
    granularity: Granularity = "token"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        return in_order(units)


def build(ctx: BuildContext, cfg: NoSettings) -> Truncation:
    return Truncation()


METHOD = Method("truncate", "keeps the first tokens (cuts mid-sentence)", "compressor", build)
