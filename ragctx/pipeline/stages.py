"""The model-free stages of the foundation: retrieve and near-duplicate removal."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ragctx.indexes.base import Retriever
from ragctx.method import BuildContext, Method, NoSettings
from ragctx.state import PipelineState

_WORD = re.compile(r"\w+")


@dataclass
class RetrieveStage:
    """Fills the state from a retriever, unless the caller already gave passages."""

    retriever: Retriever | None
    top_k: int
    name: str = "retrieve"

    def run(self, state: PipelineState) -> None:
        if state.passages:
            state.notes["skipped"] = "passages given by the caller"
            return
        if self.retriever is None:
            raise ValueError("no passages were given and no index is configured to retrieve from")
        state.set_passages(self.retriever.search(state.question, self.top_k))
        state.notes["retrieved"] = len(state.passages)


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@dataclass
class DedupStage:
    """Drops a passage whose word 3-shingles overlap an earlier (better-ranked) one above `threshold`."""

    threshold: float
    name: str = "dedup"

    def run(self, state: PipelineState) -> None:
        kept: list[set[tuple[str, ...]]] = []
        dropped: list[str] = []
        survivors = []
        for result in state.passages:
            sh = shingles(result.passage.text)
            if any(jaccard(sh, other) >= self.threshold for other in kept):
                dropped.append(result.passage.id)
                continue
            kept.append(sh)
            survivors.append(result)
        state.passages = survivors
        state.notes["dropped"] = dropped


def _retrieve(ctx: BuildContext, cfg: NoSettings) -> RetrieveStage:
    return RetrieveStage(ctx.retriever, ctx.settings.top_k)


def _dedup(ctx: BuildContext, cfg: NoSettings) -> DedupStage:
    return DedupStage(ctx.settings.dedup_threshold)


RETRIEVE = Method(
    "retrieve", "top-k passages from the index (skipped when the caller gives passages)", "retrieval", _retrieve
)
DEDUP = Method(
    "dedup",
    "drops a passage whose word 3-shingles overlap an earlier one with Jaccard >= `dedup_threshold`",
    "filter",
    _dedup,
)
