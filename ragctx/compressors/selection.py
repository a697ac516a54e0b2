"""Selection, written once for every compressor: threshold, top-k, then a token budget.

A compressor only scores units (tokens, sentences, passages); this module decides which units stay, and
`CompressStage` checks the rendered context against the budget with the target tokenizer, so the budget
holds exactly whatever the joins between spans cost.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from ragctx.segmentation import TokenCounter, sentence_offsets, sub_sentence_offsets
from ragctx.state import Budget, PipelineState, merge_spans, passage_header, render

Granularity = Literal["token", "word", "sentence", "passage"]
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Unit:
    """A candidate span: `passage_index` into the state's passages, offsets into that passage's text."""

    passage_index: int
    start: int
    end: int


class UnitScorer(Protocol):
    """What a compression method implements: one score per unit, higher = keep first.

    Optional attributes a scorer may set: `default_threshold` (its natural cut-off when nothing else is
    asked), `floor` (a unit scoring below it is never kept, budget left or not) and `ranks_passages`
    (kept passages are put in the order of their best unit, so the caller's order does not matter).
    """

    name: str
    granularity: Granularity

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]: ...


def in_order(units: Sequence[Unit]) -> list[float]:
    """Scores that keep a prefix: earlier units (in the current passage order) score higher."""
    return [-float(i) for i in range(len(units))]


def make_units(state: PipelineState, granularity: Granularity, counter: TokenCounter) -> list[Unit]:
    units: list[Unit] = []
    for i, result in enumerate(state.passages):
        text = result.passage.text
        for span in result.spans:
            if granularity == "passage":
                pieces = [(span.start, span.end)]
            elif granularity == "sentence":
                pieces = sub_sentence_offsets(text, span.start, span.end)
            elif granularity == "word":
                pieces = [
                    (span.start + m.start(), span.start + m.end()) for m in _WORD.finditer(text[span.start : span.end])
                ]
            else:
                pieces = counter.token_offsets(text, span.start, span.end)
            units.extend(Unit(i, a, b) for a, b in pieces)
    return units


def unit_costs(state: PipelineState, units: Sequence[Unit], counter: TokenCounter) -> list[int]:
    """Tokens each unit costs where it stands in its passage (at least 1 for a non-empty unit).

    A unit counted alone can cost more than it does in context (a word without its leading space often
    splits into more tokens), and the units' counts need not add up to the text's. Here each kept span is
    tokenised once and every token is charged to the unit holding its last character (a token between
    units, such as a run of spaces, to the unit after it).
    """
    if not getattr(counter.tokenizer, "is_fast", False):  # no offsets from a slow tokenizer: count alone
        return counter.count_many([state.passages[u.passage_index].passage.text[u.start : u.end] for u in units])
    by_passage: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        by_passage.setdefault(u.passage_index, []).append(i)
    costs = [0] * len(units)
    for p, members in by_passage.items():
        members.sort(key=lambda i: units[i].start)
        starts = [units[i].start for i in members]
        result = state.passages[p]
        # Spans are rendered apart, each after a space (the header's or the join's): tokenised that way.
        for span in result.spans:
            for _, end in counter.token_offsets(result.passage.text, span.start, span.end, after_space=True):
                k = bisect.bisect_right(starts, end - 1) - 1
                if k < 0 or end - 1 >= units[members[k]].end:
                    k = min(k + 1, len(members) - 1)  # a token between units goes with the next one
                costs[members[k]] += 1
    return [max(c, 1) if u.end > u.start else 0 for c, u in zip(costs, units, strict=True)]


def choose(
    units: Sequence[Unit],
    scores: Sequence[float],
    costs: Sequence[int],
    header_costs: Sequence[int],
    budget: Budget,
    limit: int | None,
) -> list[bool]:
    """Which units to keep: those passing threshold and top-k, then greedily by score within `limit`.

    A unit's cost is its own tokens plus its passage's header the first time the passage is used (and the
    newline before it, for every passage after the first). Ties keep the earlier unit. A unit that does not
    fit is skipped and smaller later ones may still fit.
    """
    n = len(units)
    candidates = [i for i in range(n) if budget.threshold is None or scores[i] >= budget.threshold]
    candidates.sort(key=lambda i: (-scores[i], i))
    if budget.top_k is not None:
        candidates = candidates[: budget.top_k]
    keep = [False] * n
    used = 0
    opened: set[int] = set()
    for i in candidates:
        p = units[i].passage_index
        cost = costs[i] + (0 if p in opened else header_costs[p] + (1 if opened else 0))
        if limit is not None and used + cost > limit:
            continue
        keep[i] = True
        used += cost
        opened.add(p)
    return keep


@dataclass(frozen=True)
class ForceKeep:
    """Units that stay whatever their score (still within the budget, kept first)."""

    numbers: bool = False
    first_sentence: bool = False
    strings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.numbers or self.first_sentence or bool(self.strings)

    def mask(self, state: PipelineState, units: Sequence[Unit]) -> list[bool]:
        firsts: dict[int, tuple[int, int]] = {}
        found: dict[int, list[tuple[int, int]]] = {}
        out = []
        for u in units:
            text = state.passages[u.passage_index].passage.text
            forced = self.numbers and any(c.isdigit() for c in text[u.start : u.end])
            if self.first_sentence and not forced:
                if u.passage_index not in firsts:
                    sents = sentence_offsets(text)
                    firsts[u.passage_index] = sents[0] if sents else (0, 0)
                a, b = firsts[u.passage_index]
                forced = u.start < b and u.end > a
            if self.strings and not forced:
                if u.passage_index not in found:
                    found[u.passage_index] = [
                        (m.start(), m.end()) for s in self.strings for m in re.finditer(re.escape(s), text)
                    ]
                forced = any(u.start < b and u.end > a for a, b in found[u.passage_index])
            out.append(forced)
        return out


@dataclass
class CompressStage:
    """Scores units with one method and keeps what the shared selection allows."""

    scorer: UnitScorer
    counter: TokenCounter
    # A pre-filter before another compressor keeps `budget_scale` times the budget.
    budget_scale: float = 1.0
    force: ForceKeep = ForceKeep()

    @property
    def name(self) -> str:
        return self.scorer.name

    def run(self, state: PipelineState) -> None:
        tokens_in = state.reference_tokens or self.counter.count(render(state.passages))
        limit = state.budget.limit(tokens_in)
        if limit is not None:
            limit = int(limit * self.budget_scale)
        b = state.budget
        if limit is None and b.threshold is None and b.top_k is None:
            # Methods with a natural cut-off (EXIT's tau) apply it when nothing else is asked for.
            default = getattr(self.scorer, "default_threshold", None)
            if default is None:
                state.notes["skipped"] = "no budget, rate, threshold or top_k"
                return
            b = state.budget = replace(b, threshold=default)
        units = make_units(state, self.scorer.granularity, self.counter)
        started = time.perf_counter()
        scores = self.scorer.score(state, units)
        if self.force:
            forced = self.force.mask(state, units)
            scores = [float("inf") if f else x for x, f in zip(scores, forced, strict=True)]
            state.notes["forced_units"] = sum(forced)
        state.notes["score_ms"] = round((time.perf_counter() - started) * 1000, 3)
        costs = unit_costs(state, units, self.counter) if self.scorer.granularity != "token" else [1] * len(units)
        headers = self.header_costs(state)
        floor: float | None = getattr(self.scorer, "floor", None)
        asked = state.budget
        if floor is not None and units:
            below = sum(x < floor for x in scores)
            state.notes["below_floor"] = below
            if below == len(units):
                state.notes["reason"] = (
                    f"no {self.scorer.granularity} reaches the relevance floor {floor:g} "
                    f"(best {max(scores):.3f}): nothing relevant to the question"
                )
            asked = replace(asked, threshold=floor if asked.threshold is None else max(floor, asked.threshold))
        keep = choose(units, scores, costs, headers, asked, limit)
        self._apply(state, units, keep)
        if limit is not None:
            self._enforce(state, units, scores, keep, limit)
        if getattr(self.scorer, "ranks_passages", False):
            best: dict[int, float] = {}
            for u, x, k in zip(units, scores, keep, strict=True):
                if k:
                    best[u.passage_index] = max(x, best.get(u.passage_index, x))
            order = sorted(range(len(state.passages)), key=lambda i: (-best.get(i, float("-inf")), i))
            state.passages = [state.passages[i] for i in order]
        state.notes["units"] = len(units)
        state.notes["kept_units"] = sum(keep)

    def header_costs(self, state: PipelineState) -> list[int]:
        """Tokens of each passage's header as `render` writes it: numbered among the kept passages (so at
        most the number of passages with spans; "[12]" costs more than "[1]"), its trailing space
        tokenised with the first word of the text."""
        last = max(1, sum(1 for r in state.passages if r.spans))
        return self.counter.count_many([passage_header(last, r.passage).rstrip() for r in state.passages])

    def _apply(self, state: PipelineState, units: Sequence[Unit], keep: Sequence[bool]) -> None:
        ranges: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(state.passages))}
        for u, k in zip(units, keep, strict=True):
            if k:
                ranges[u.passage_index].append((u.start, u.end))
        for i, result in enumerate(state.passages):
            result.spans = merge_spans(result.passage, ranges[i])

    def _enforce(
        self,
        state: PipelineState,
        units: Sequence[Unit],
        scores: Sequence[float],
        keep: list[bool],
        limit: int,
    ) -> None:
        """Drop the lowest-scored kept units until the rendered context fits: joins cost tokens too."""
        order = sorted((i for i in range(len(units)) if keep[i]), key=lambda i: (scores[i], -i))
        while self.counter.count(render(state.passages)) > limit and order:
            keep[order.pop(0)] = False
            self._apply(state, units, keep)
