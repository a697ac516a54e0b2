"""The state a pipeline passes from stage to stage, and how it is rendered into the context text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ragctx.types import Passage, PassageResult, Span


@dataclass(frozen=True)
class Budget:
    """How much to keep. At most one of `tokens` / `rate`; `threshold` and `top_k` apply before it."""

    tokens: int | None = None
    rate: float | None = None
    threshold: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.rate is not None:
            raise ValueError("give a token budget or a rate, not both")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"budget {self.tokens} is not allowed: the token budget must be at least 1")
        if self.rate is not None and not 0 < self.rate <= 1:
            raise ValueError(f"rate {self.rate} is outside the allowed range (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k {self.top_k} is not allowed: it must be at least 1")

    def limit(self, tokens_in: int) -> int | None:
        """The token limit for a context of `tokens_in` tokens, or None for no limit."""
        if self.tokens is not None:
            return self.tokens
        if self.rate is not None:
            return max(1, int(self.rate * tokens_in))
        return None


@dataclass
class PipelineState:
    question: str
    passages: list[PassageResult] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    # Tokens of the passages as retrieved or given: a rate is a fraction of these, whatever earlier
    # stages (dedup, filters) removed.
    reference_tokens: int | None = None
    # Stage-specific notes (e.g. what dedup dropped) end up in that stage's stats.
    notes: dict[str, object] = field(default_factory=dict)

    def set_passages(self, passages: list[Passage]) -> None:
        self.passages = [
            PassageResult(passage=p, spans=[Span(p.id, 0, len(p.text))] if p.text else []) for p in passages
        ]

    def kept(self) -> list[PassageResult]:
        return [p for p in self.passages if p.spans]


class TokenCounting(Protocol):
    def count(self, text: str) -> int: ...


def passage_header(position: int, passage: Passage) -> str:
    return f"Document [{position}] (Title: {passage.title}) " if passage.title else f"Document [{position}] "


def passage_body(result: PassageResult) -> str:
    return " ".join(s.text_of(result.passage) for s in result.spans)


def render(passages: list[PassageResult]) -> str:
    """The context text: kept passages in order, each with a numbered header and its kept spans."""
    kept = [p for p in passages if p.spans]
    return "\n".join(passage_header(i, p.passage) + passage_body(p) for i, p in enumerate(kept, 1))


def merge_spans(passage: Passage, ranges: list[tuple[int, int]]) -> list[Span]:
    """Sorted, merged spans; ranges separated only by whitespace merge (the whitespace is kept)."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if end <= start:
            continue
        if merged and not passage.text[merged[-1][1] : start].strip():
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [Span(passage.id, a, b) for a, b in merged]
