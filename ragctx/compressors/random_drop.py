"""`random-drop`: keeps random sentences (seeded by the request's seed), a floor any method must beat."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ragctx.compressors.selection import Granularity, Unit
from ragctx.method import BuildContext, Method, NoSettings
from ragctx.state import PipelineState


@dataclass
class RandomSentenceDrop:
    name: str = "random-drop"
    granularity: Granularity = "sentence"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        rng = random.Random(state.seed)
        return [rng.random() for _ in units]


def build(ctx: BuildContext, cfg: NoSettings) -> RandomSentenceDrop:
    return RandomSentenceDrop()


METHOD = Method("random-drop", "keeps random sentences within the budget (seeded)", "compressor", build)
