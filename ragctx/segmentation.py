"""Sentence and token segmentation with exact character offsets into the source text."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragctx.deadline import check_deadline

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


# pySBD is exact on ordinary passages but superlinear on some text (20k characters of "a. a. ..." take 6 s in one call,
# a 2 MB passage never ends), and one Segmenter keeps per-call state, so it cannot be shared by threads.
# So: one Segmenter per thread; texts longer than PYSBD_CHUNK are cut at plain sentence ends into chunks
# of at most that size, each given to pySBD; past PYSBD_MAX the plain splitter alone segments (linear).
PYSBD_CHUNK = 4_000
PYSBD_MAX = 20_000
_local = threading.local()
# A plain sentence end: . ! or ? (closing quotes and brackets allowed), whitespace, then what starts one.
_PLAIN_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def _segmenter() -> Any:
    seg = getattr(_local, "segmenter", None)
    if seg is None:
        import pysbd

        seg = _local.segmenter = pysbd.Segmenter(language="en", clean=False)
    return seg


def plain_sentence_offsets(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentences of `text[start:end]` by the plain rule (linear time), whitespace trimmed."""
    stop = len(text) if end is None else end
    spans = []
    cursor = start
    for m in _PLAIN_END.finditer(text, start, stop):
        cut = m.start() + len(m.group().rstrip())
        spans.append((cursor, cut))
        cursor = m.end()
    spans.append((cursor, stop))
    out = []
    for a, b in spans:
        a, b = _lstrip_pos(text, a, b), _rstrip_pos(text, b, a)
        if b > a:
            out.append((a, b))
    return out


def sentence_offsets(text: str) -> list[tuple[int, int]]:
    """`[start, end)` of every sentence, whitespace trimmed, so that `text[start:end]` is the sentence.

    pySBD splits (in chunks past PYSBD_CHUNK characters; the plain rule alone past PYSBD_MAX); offsets
    are recovered by searching each sentence forward from the previous one, which stays exact even
    where pySBD's own `char_span` mode drifts on repeated sentences. Checks the request's deadline
    between chunks.
    """
    if len(text) > PYSBD_MAX:
        return plain_sentence_offsets(text)
    if len(text) <= PYSBD_CHUNK:
        return _pysbd_offsets(text, 0, len(text))
    out: list[tuple[int, int]] = []
    for a, b in _chunks(text):
        check_deadline()
        out += _pysbd_offsets(text, a, b)
    return out


def _chunks(text: str) -> list[tuple[int, int]]:
    """Consecutive `[a, b)` of at most PYSBD_CHUNK characters, cut at plain sentence ends (at any
    whitespace, or anywhere, when a stretch has none)."""
    out = []
    a = 0
    while len(text) - a > PYSBD_CHUNK:
        limit = a + PYSBD_CHUNK
        cut = max((m.end() for m in _PLAIN_END.finditer(text, a, limit)), default=-1)
        if cut <= a:
            cut = text.rfind(" ", a, limit) + 1
        if cut <= a:
            cut = limit
        out.append((a, cut))
        a = cut
    out.append((a, len(text)))
    return out


def _pysbd_offsets(text: str, a: int, b: int) -> list[tuple[int, int]]:
    piece = text[a:b]
    spans: list[tuple[int, int]] = []
    cursor = 0
    for raw in _segmenter().segment(piece):
        sent = raw.strip()
        if not sent:
            continue
        start = piece.find(sent, cursor)
        if start < 0:  # pySBD altered the text (it should not with clean=False); fall back to one span
            whole = (_lstrip_pos(piece, 0), _rstrip_pos(piece, len(piece)))
            return [(a + whole[0], a + whole[1])] if piece.strip() else []
        spans.append((a + start, a + start + len(sent)))
        cursor = start + len(sent)
    return spans


def _lstrip_pos(text: str, i: int, j: int | None = None) -> int:
    """The first non-space position at or after `i` (before `j`)."""
    stop = len(text) if j is None else j
    while i < stop and text[i].isspace():
        i += 1
    return i


def _rstrip_pos(text: str, j: int, i: int = 0) -> int:
    """One past the last non-space position before `j` (at or after `i`)."""
    while j > i and text[j - 1].isspace():
        j -= 1
    return j


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
