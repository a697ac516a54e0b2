"""A pipeline is a list of named stages run top to bottom over one `PipelineState`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ragctx.deadline import check_deadline
from ragctx.state import Budget, PipelineState, TokenCounting, render
from ragctx.types import CompressedContext, Passage, StageStats


class Stage(Protocol):
    """One step of the pipeline. It edits the state in place: the order of passages or their kept spans."""

    @property
    def name(self) -> str: ...

    def run(self, state: PipelineState) -> None: ...


@dataclass
class Pipeline:
    stages: Sequence[Stage]
    counter: TokenCounting
    tokenizer_name: str = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def run(
        self,
        question: str,
        passages: list[Passage] | None = None,
        budget: Budget | None = None,
        seed: int = 0,
    ) -> CompressedContext:
        """Run every stage; `passages` given by the caller replace retrieval."""
        if not question.strip():
            raise ValueError("the question is empty")
        state = PipelineState(question=question, budget=budget or Budget(), seed=seed)
        if passages:
            _check_unique_ids(passages)
            state.set_passages(passages)
        stats: list[StageStats] = []
        tokens = self.counter.count(render(state.passages))
        if state.passages:
            state.reference_tokens = tokens
        for stage in self.stages:
            check_deadline()  # a request past its time limit stops here, freeing its worker
            state.notes = {}
            started = time.perf_counter()
            if state.kept() or stage.name == "retrieve":
                stage.run(state)
            else:  # nothing given, or an earlier stage kept nothing: say why instead of scoring nothing
                state.notes["skipped"] = "no passages"
                state.notes["reason"] = _why_empty(passages, stats)
            ms = (time.perf_counter() - started) * 1000
            tokens_in = tokens
            tokens = self.counter.count(render(state.passages))
            if state.reference_tokens is None and state.passages:
                state.reference_tokens = tokens
            cache_hits = state.notes.pop("cache_hits", 0)
            stats.append(
                StageStats(stage.name, tokens_in, tokens, round(ms, 3), int(cache_hits), dict(state.notes))  # type: ignore[call-overload]
            )
        return CompressedContext(
            question=question,
            text=render(state.passages),
            passages=state.passages,
            stats=stats,
            tokenizer=self.tokenizer_name,
            tokens_in=state.reference_tokens or 0,
            tokens_out=tokens,
        )


def _why_empty(given: list[Passage] | None, stats: list[StageStats]) -> str:
    """Why a stage found no passages: the earlier stage's own reason, else which stage emptied them."""
    for st in reversed(stats):
        if "reason" in st.details:
            return str(st.details["reason"])
    emptied = next((st.name for st in stats if st.tokens_in > 0 and st.tokens_out == 0), None)
    if emptied:
        return f"stage {emptied!r} kept no passage"
    return "no passages were given" if given is not None else "nothing was retrieved"


def _check_unique_ids(passages: list[Passage]) -> None:
    seen: set[str] = set()
    for p in passages:
        if p.id in seen:
            raise ValueError(f"passage id {p.id!r} appears twice; ids must be unique within a request")
        seen.add(p.id)
