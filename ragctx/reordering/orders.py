"""Passage orders that need no model: lost-in-the-middle (two variants), inverse, seeded shuffle.

The two lost-in-the-middle variants differ (reference: competitors.md §3.2, algorithms.md §10.2):
- LangChain's `LongContextReorder` trusts the input order (most relevant first), reverses it and places
  items alternately at the front and the back. With K even the most relevant passage ends *last*, with K
  odd it ends *first*.
- LlamaIndex's `LongContextReorder` ignores the input order: it sorts by score ascending (missing scores
  count as 0, the sort is stable) and then alternates front/back the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ragctx.method import Method, NoSettings
from ragctx.state import PipelineState

T = TypeVar("T")


def lost_in_middle_langchain(items: Sequence[T]) -> list[T]:
    out: list[T] = []
    for i, item in enumerate(reversed(items)):
        if i % 2 == 1:
            out.append(item)
        else:
            out.insert(0, item)
    return out


def lost_in_middle_llamaindex(items: Sequence[T], score: Callable[[T], float | None]) -> list[T]:
    out: list[T] = []
    for i, item in enumerate(sorted(items, key=lambda x: score(x) or 0.0)):
        if i % 2 == 0:
            out.insert(0, item)
        else:
            out.append(item)
    return out


@dataclass
class ReorderStage:
    """Applies one of the model-free orders to the passages (all of them, kept or not)."""

    name: str

    def run(self, state: PipelineState) -> None:
        items = state.passages
        if self.name == "reorder-lim-langchain":
            state.passages = lost_in_middle_langchain(items)
        elif self.name == "reorder-lim-llamaindex":
            state.passages = lost_in_middle_llamaindex(items, lambda r: r.passage.score)
        elif self.name == "reorder-inverse":
            state.passages = list(reversed(items))
        elif self.name == "reorder-shuffle":
            shuffled = list(items)
            random.Random(state.seed).shuffle(shuffled)
            state.passages = shuffled
        else:
            raise ValueError(f"unknown order {self.name!r}")


def _order(name: str, text: str) -> Method[NoSettings]:
    return Method(name, text, "order", lambda ctx, cfg: ReorderStage(name), needs_question=False)


# Four one-line orders share this module: each is a branch of ReorderStage.run.
LIM_LANGCHAIN = _order(
    "reorder-lim-langchain",
    "lost in the middle, LangChain's `LongContextReorder`: trusts the input order (best first), reverses it, "
    "alternates front/back (with an even number of passages the best ends last, with an odd number first)",
)
LIM_LLAMAINDEX = _order(
    "reorder-lim-llamaindex",
    "lost in the middle, LlamaIndex's `LongContextReorder`: sorts by retrieval score ascending (missing = 0, "
    "stable), then alternates front/back; ignores the input order",
)
INVERSE = _order("reorder-inverse", "reverses the order: the best passage ends next to the question")
SHUFFLE = _order("reorder-shuffle", "seeded random order")
