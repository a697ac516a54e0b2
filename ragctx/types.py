"""Core data types. Dataclasses inside the package; pydantic only at the boundaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Passage:
    """A retrieved (or caller-given) passage. `score` is the retriever's score, if any."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None

    @property
    def titled_text(self) -> str:
        """Title and text, as models read a passage on its own (the title names what the text may not)."""
        return self.titled(self.text)

    def titled(self, text: str) -> str:
        """`text` (this passage's text or a span of it) under the passage's title."""
        return f"{self.title}\n{text}" if self.title else text


@dataclass(frozen=True, order=True)
class Span:
    """A character range `[start, end)` of one passage's text."""

    passage_id: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid span [{self.start}, {self.end}) of passage {self.passage_id!r}")

    def text_of(self, passage: Passage) -> str:
        return passage.text[self.start : self.end]


@dataclass
class StageStats:
    """What one pipeline stage did: tokens of the rendered context before and after, time, cache hits."""

    name: str
    tokens_in: int
    tokens_out: int
    ms: float
    cache_hits: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassageResult:
    """One passage as handed to the LLM: its place, its kept spans, and the scores that decided."""

    passage: Passage
    spans: list[Span]
    label: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class CompressedContext:
    """The output of the pipeline: the context text and where every kept character came from."""

    question: str
    text: str
    passages: list[PassageResult]
    stats: list[StageStats]
    tokenizer: str
    tokens_in: int  # of the passages as retrieved or given
    tokens_out: int  # of `text`

    @property
    def order(self) -> list[str]:
        return [p.passage.id for p in self.passages]

    @property
    def spans(self) -> list[Span]:
        return [s for p in self.passages for s in p.spans]

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        """JSON-ready; `include_text` adds each passage's whole text (kept and dropped parts), which the
        inspector needs to show the spans in place."""
        return {
            "question": self.question,
            "context": self.text,
            "tokenizer": self.tokenizer,
            "order": self.order,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "passages": [
                {
                    "id": p.passage.id,
                    "title": p.passage.title,
                    "retrieval_score": p.passage.score,
                    "label": p.label,
                    "scores": p.scores,
                    "metadata": p.passage.metadata,
                    "spans": [{"start": s.start, "end": s.end, "text": s.text_of(p.passage)} for s in p.spans],
                    **({"text": p.passage.text} if include_text else {}),
                }
                for p in self.passages
            ],
            "stats": [asdict(s) for s in self.stats],
        }
