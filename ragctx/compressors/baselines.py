"""Baseline compressors: keep-in-order (sentence budget), token truncation, seeded random sentence drop."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragctx.compressors.selection import Granularity, Unit
from ragctx.state import PipelineState

# Where EmbeddingPassageFilter records each passage's cosine to the question (PassageResult.scores), so
# a later compressor in a chain (EHPC) can use it as a passage prior.
EMBEDDING_SCORE = "embedding"


def _in_order(units: Sequence[Unit]) -> list[float]:
    # Earlier units (in the current passage order) score higher, so a budget keeps a prefix.
    return [-float(i) for i in range(len(units))]


@dataclass
class SentenceBudget:
    """Keeps whole sentences in the current passage order until the budget is spent."""

    name: str = "budget"
    granularity: Granularity = "sentence"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        return _in_order(units)


@dataclass
class Truncation:
    """Keeps the first tokens of the context, the usual baseline: cuts mid-sentence."""

    name: str = "truncate"
    granularity: Granularity = "token"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        return _in_order(units)


@dataclass
class RandomSentenceDrop:
    """Keeps random sentences (seeded by the request's seed), a floor any method must beat."""

    name: str = "random-drop"
    granularity: Granularity = "sentence"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        rng = random.Random(state.seed)
        return [rng.random() for _ in units]


@dataclass
class EmbeddingPassageFilter:
    """Keeps whole passages by embedding cosine to the question (the 'embedding top-k' baseline); each
    passage's cosine is recorded under `EMBEDDING_SCORE` (the best of its spans).

    A span is embedded under its passage's title, as the index embeds passages: NQ-20 text often never
    names its subject (rows 200-399: the best passage holds the answer 0.82 -> 0.94 with the title).
    """

    embedder: Any
    name: str = "embed-passages"
    granularity: Granularity = "passage"
    # Cosine below which a passage is not relevant (Settings.relevance_floor); None = off.
    floor: float | None = None
    # Kept passages best first: the context (and a compressor after this one) never depends on the order
    # the caller's retriever returned them in.
    ranks_passages: bool = True

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        passages = [state.passages[u.passage_index].passage for u in units]
        texts = [p.titled(p.text[u.start : u.end]) for p, u in zip(passages, units, strict=True)]
        vecs = self.embedder.encode([state.question, *texts], normalize_embeddings=True, convert_to_numpy=True)
        scores = [float(x) for x in vecs[1:] @ vecs[0]]
        for u, s in zip(units, scores, strict=True):
            recorded = state.passages[u.passage_index].scores
            recorded[EMBEDDING_SCORE] = max(s, recorded.get(EMBEDDING_SCORE, s))
        return scores
