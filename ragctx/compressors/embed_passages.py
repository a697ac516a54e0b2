"""`embed-passages`: keeps whole passages by embedding cosine to the question (the 'embedding top-k'
baseline), best first; none below the relevance floor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from ragctx.compressors.selection import Granularity, Unit
from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState

# Where EmbeddingPassageFilter records each passage's cosine to the question (PassageResult.scores), so
# a later compressor in a chain (EHPC) can use it as a passage prior.
EMBEDDING_SCORE = "embedding"
# Titled MiniLM cosine below which a passage is not relevant to the question (see `floor`).
DEFAULT_RELEVANCE_FLOOR = 0.18


class EmbedPassagesSettings(MethodSettings):
    floor: float = Field(
        default=DEFAULT_RELEVANCE_FLOOR,
        ge=-1.0,
        le=1.0,
        description="A passage whose titled embedding cosine to the question is below this never enters the "
        "context, even with budget left (a budget is a ceiling, not a target); -1 turns it off. Calibrated on "
        "NQ-20 dev (`benchmarks/relevance_floor.py`, docs/benchmarks.md).",
    )


@dataclass
class EmbeddingPassageFilter:
    """Each passage's cosine is recorded under `EMBEDDING_SCORE` (the best of its spans).

    A span is embedded under its passage's title, as the index embeds passages: NQ-20 text often never
    names its subject (rows 200-399: the best passage holds the answer 0.82 -> 0.94 with the title).
    """

    embedder: Any
    name: str = "embed-passages"
    granularity: Granularity = "passage"
    # Cosine below which a passage is not relevant; None = off.
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


def build(ctx: BuildContext, cfg: EmbedPassagesSettings) -> EmbeddingPassageFilter:
    return EmbeddingPassageFilter(ctx.models.embedder(), floor=cfg.floor if cfg.floor > -1 else None)


METHOD = Method(
    "embed-passages",
    "keeps whole passages by embedding cosine to the question (each embedded under its title, as the index "
    "does), best first; none below `floor`",
    "compressor",
    build,
    EmbedPassagesSettings,
)
