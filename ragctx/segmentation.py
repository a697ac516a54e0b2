"""Sentence and token segmentation with exact character offsets into the source text."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@functools.lru_cache(maxsize=1)
def _segmenter() -> object:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def sentence_offsets(text: str) -> list[tuple[int, int]]:
    """`[start, end)` of every sentence, whitespace trimmed, so that `text[start:end]` is the sentence.

    pySBD splits; offsets are recovered by searching each sentence forward from the previous one, which
    stays exact even where pySBD's own `char_span` mode drifts on repeated sentences.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for raw in _segmenter().segment(text):  # type: ignore[attr-defined]
        sent = raw.strip()
        if not sent:
            continue
        start = text.find(sent, cursor)
        if start < 0:  # pySBD altered the text (it should not with clean=False); fall back to one span
            return [(_lstrip_pos(text, 0), _rstrip_pos(text, len(text)))] if text.strip() else []
        spans.append((start, start + len(sent)))
        cursor = start + len(sent)
    return spans


def _lstrip_pos(text: str, i: int) -> int:
    return len(text) - len(text[i:].lstrip())


def _rstrip_pos(text: str, j: int) -> int:
    return len(text[:j].rstrip())


def sub_sentence_offsets(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentences of `text[start:end]`, as offsets into `text`."""
    return [(start + a, start + b) for a, b in sentence_offsets(text[start:end])]


@dataclass
class TokenCounter:
    """Counts tokens with the target model's tokenizer; the one measure of every budget."""

    tokenizer: PreTrainedTokenizerBase
    name: str = ""

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) if t else 0 for x, t in zip(ids, texts, strict=True)]

    def token_offsets(
        self, text: str, start: int = 0, end: int | None = None, *, after_space: bool = False
    ) -> list[tuple[int, int]]:
        """Character offsets (into `text`) of the tokens of `text[start:end]`; with `after_space`, tokenised
        as it reads after a space (as a rendered span does), the space's offsets falling on the first token."""
        lead = " " if after_space else ""
        enc = self.tokenizer(lead + text[start:end], add_special_tokens=False, return_offsets_mapping=True)
        shift = start - len(lead)
        return [(max(start, shift + a), max(start, shift + b)) for a, b in enc["offset_mapping"] if b > a]


def fixed_token_segments(
    counter: TokenCounter, text: str, size: int, start: int = 0, end: int | None = None
) -> list[tuple[int, int]]:
    """Cut `text[start:end]` into consecutive segments of `size` tokens (the last may be shorter).

    Segment boundaries are token boundaries, so the segments tile the text exactly: caches key on them.
    """
    if size < 1:
        raise ValueError("segment size must be at least 1 token")
    stop = len(text) if end is None else end
    offsets = counter.token_offsets(text, start, stop)
    segments = []
    for i in range(0, len(offsets), size):
        seg_start = start if i == 0 else offsets[i][0]
        nxt = i + size
        seg_end = offsets[nxt][0] if nxt < len(offsets) else stop
        segments.append((seg_start, seg_end))
    return segments
