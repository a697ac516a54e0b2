"""Reading corpora into passages: JSON Lines (optionally gzipped), plain text and Markdown.

JSONL rows are passages already. Text and Markdown are split into paragraphs on blank lines, and the
paragraphs are merged (or cut, on a sentence boundary if possible, else a word boundary) into passages of
at most `chunk_words` words. Markdown passages never cross a heading; their title is the nearest heading.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ragctx.types import Passage

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl.gz", ".jsonl")
TEXT_SUFFIXES = (".txt",)
MARKDOWN_SUFFIXES = (".md", ".markdown")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES + MARKDOWN_SUFFIXES

_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# The whitespace after . ! or ? (or after one closing quote or bracket following them) ends a sentence.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


class DocumentFormatError(ValueError):
    """A corpus file that cannot be read; the message starts with `file:line:` (or `file:`)."""


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files and directories named by `patterns` (globs allowed, `**` recursive), in order, without repeats.

    A pattern that matches nothing raises FileNotFoundError naming it: a typo should not silently give an
    index with fewer documents than meant.
    """
    paths: list[Path] = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        if glob.has_magic(expanded):
            matches = sorted(Path(m) for m in glob.glob(expanded, recursive=True))
        else:
            matches = [Path(expanded)] if Path(expanded).exists() else []
        if not matches:
            raise FileNotFoundError(f"no file or directory matches {pattern!r}")
        paths.extend(m for m in matches if m not in paths)
    return paths


def read_documents(paths: Iterable[Path], chunk_words: int) -> Iterator[Passage]:
    """Passages of every file in `paths`; directories are walked for supported files, sorted by path.

    Lazy: a format error surfaces when the reader reaches it, so callers that build an index from this
    iterator must be ready to abandon what they built so far.
    """
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be at least 1 (got {chunk_words})")
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix_of(p) is not None)
            for file in files:
                yield from _read_file(file, chunk_words)
        else:
            yield from _read_file(path, chunk_words)


def _suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def _stem_of(path: Path, suffix: str) -> str:
    return path.name[: -len(suffix)]


def _read_file(path: Path, chunk_words: int) -> Iterator[Passage]:
    suffix = _suffix_of(path)
    if suffix is None:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise DocumentFormatError(f"{path}: unsupported file type (supported: {supported})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    stem = _stem_of(path, suffix)
    if suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(path, stem)
        return
    text = _read_text(path)
    is_text = suffix in TEXT_SUFFIXES
    sections = [(stem, text)] if is_text else _markdown_sections(text, default_title=stem)
    number = 0
    for title, body in sections:
        for chunk in chunk_paragraphs(split_paragraphs(body), chunk_words):
            number += 1
            yield Passage(id=f"{stem}#{number}", text=chunk, title=title, metadata={"source": str(path)})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _open_lines(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open("r", encoding="utf-8-sig")


def _read_jsonl(path: Path, stem: str) -> Iterator[Passage]:
    line_no = 0
    try:
        with _open_lines(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if line.strip():
                    passage = _jsonl_passage(line, path, stem, line_no)
                    if passage is not None:
                        yield passage
    except UnicodeDecodeError as exc:
        # The decoder reads ahead, so the line is approximate.
        raise DocumentFormatError(f"{path}:{line_no + 1}: not UTF-8 text near this line ({exc.reason})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DocumentFormatError(f"{path}: damaged gzip file ({exc})") from None


def _jsonl_passage(line: str, path: Path, stem: str, line_no: int) -> Passage | None:
    where = f"{path}:{line_no}"
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DocumentFormatError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise DocumentFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "text" not in row:
        raise DocumentFormatError(f'{where}: missing "text"')
    text = row.pop("text")
    if not isinstance(text, str):
        raise DocumentFormatError(f'{where}: "text" must be a string (got {type(text).__name__})')
    doc_id = row.pop("id", None)
    if doc_id is None:
        doc_id = f"{stem}:{line_no}"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise DocumentFormatError(f'{where}: "id" must be a string or an integer (got {type(doc_id).__name__})')
    title = row.pop("title", None)
    if title is not None and not isinstance(title, str):
        raise DocumentFormatError(f'{where}: "title" must be a string (got {type(title).__name__})')
    if not text.strip():
        # An empty passage can never be retrieved usefully; one bad row should not fail a whole corpus.
        log.warning('%s: empty "text", row skipped', where)
        return None
    # `source` and `line` always say where the passage came from, even if the row had keys of that name.
    metadata = {**row, "source": str(path), "line": line_no}
    return Passage(id=str(doc_id), text=text, title=title or "", metadata=metadata)


def _markdown_sections(text: str, default_title: str) -> list[tuple[str, str]]:
    """(nearest heading, body) pairs; `#` lines inside fenced code blocks are not headings."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":  # YAML front matter is metadata, not prose
        end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() in ("---", "...")), None)
        if end is not None:
            lines = lines[end + 1 :]
    sections: list[tuple[str, str]] = []
    title, fence = default_title, None
    body: list[str] = []
    for line in lines:
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            fence = marker if fence is None else (None if marker == fence else fence)
        heading = _HEADING.match(line) if fence is None else None
        if heading:
            sections.append((title, "\n".join(body)))
            title, body = heading.group(2).strip() or default_title, []
        else:
            body.append(line)
    sections.append((title, "\n".join(body)))
    return [(t, b) for t, b in sections if b.strip()]


def split_paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs of `text`, split on blank lines, each stripped."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _BLANK_LINES.split(normalized) if p.strip()]


def chunk_paragraphs(paragraphs: list[str], chunk_words: int) -> list[str]:
    """Merge paragraphs into passages of at most `chunk_words` words; cut paragraphs that are too long.

    Paragraphs that fit keep their line breaks; merged paragraphs are separated by a blank line.
    """
    chunks: list[str] = []
    current: list[str] = []
    current_words = 0
    for paragraph in paragraphs:
        for piece in _cut(paragraph, chunk_words):
            words = len(piece.split())
            if current and current_words + words > chunk_words:
                chunks.append("\n\n".join(current))
                current, current_words = [], 0
            current.append(piece)
            current_words += words
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _cut(paragraph: str, chunk_words: int) -> list[str]:
    """Pieces of at most `chunk_words` words: whole sentences where possible, else word windows."""
    if len(paragraph.split()) <= chunk_words:
        return [paragraph]
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        words = sentence.split()
        if not words:
            continue
        if len(current) + len(words) > chunk_words and current:
            pieces.append(" ".join(current))
            current = []
        while len(words) > chunk_words:  # one sentence longer than a passage: cut between words
            pieces.append(" ".join(words[:chunk_words]))
            words = words[chunk_words:]
        current.extend(words)
    if current:
        pieces.append(" ".join(current))
    return pieces
