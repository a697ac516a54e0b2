"""Reading a corpus for a long job: every passage in a fixed order; a malformed row is recorded, not fatal.

The index loaders (`ragctx.indexes.loaders`) stop at the first bad row, which is right for `index build`
but would throw away hours of work in a pruning job over a large dump. This reader uses the same row
parser and chunker, and records each bad row with its file and line instead (or raises at the first one
when `strict`). Passage ids must be unique: provenance is by id, so a repeated id is a malformed row too.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragctx.indexes.loaders import (
    JSONL_SUFFIXES,
    SUPPORTED_SUFFIXES,
    DocumentFormatError,
    _jsonl_passage,
    _open_lines,
    expand_inputs,
    read_documents,
)
from ragctx.types import Passage


@dataclass(frozen=True)
class MalformedRow:
    """A row (or, with `line` None, a whole file) that could not be read."""

    source: str
    line: int | None
    message: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "line": self.line, "message": self.message}


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def corpus_files(patterns: list[str]) -> list[Path]:
    """The files named by `patterns` (globs, folders walked in sorted order), in reading order.

    Raises FileNotFoundError for a pattern that matches nothing and DocumentFormatError for a named file
    of an unsupported type: both are mistakes in the command, found before any work starts.
    """
    files: list[Path] = []
    for path in expand_inputs(patterns):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None)
        elif _suffix(path) is None:
            supported = ", ".join(SUPPORTED_SUFFIXES)
            raise DocumentFormatError(f"{path}: unsupported file type (supported: {supported})")
        else:
            found = [path]
        files.extend(f for f in found if f not in files)
    if not files:
        raise FileNotFoundError(f"no corpus files ({', '.join(SUPPORTED_SUFFIXES)}) under {', '.join(patterns)}")
    return files


class CorpusReader:
    """Passages of `files` in order. `malformed` lists the bad rows met by the latest `passages()` pass."""

    def __init__(self, files: list[Path], chunk_words: int, strict: bool = False) -> None:
        self.files = files
        self.chunk_words = chunk_words
        self.strict = strict
        self.malformed: list[MalformedRow] = []

    def passages(self) -> Iterator[Passage]:
        self.malformed = []
        first_seen: dict[str, str] = {}
        for file in self.files:
            for passage in self._read_file(file):
                where = _where(passage, file)
                earlier = first_seen.get(passage.id)
                if earlier is not None:
                    line = passage.metadata.get("line")
                    self._bad(
                        str(file),
                        line if isinstance(line, int) else None,
                        f"duplicate id {passage.id!r} (first at {earlier}); row skipped",
                    )
                    continue
                first_seen[passage.id] = where
                yield passage

    def _bad(self, source: str, line: int | None, message: str) -> None:
        row = MalformedRow(source, line, message)
        if self.strict:
            raise DocumentFormatError(f"{row.where}: {message}")
        self.malformed.append(row)

    def _read_file(self, file: Path) -> Iterator[Passage]:
        if file.name.lower().endswith(JSONL_SUFFIXES):
            yield from self._read_jsonl(file)
            return
        try:
            # Text and Markdown fail only as a whole file (not UTF-8): there is no row to skip.
            yield from read_documents([file], self.chunk_words)
        except DocumentFormatError as exc:
            self._bad(str(file), None, _without_location(str(exc), str(file)))

    def _read_jsonl(self, file: Path) -> Iterator[Passage]:
        stem = file.name[: -len(next(s for s in JSONL_SUFFIXES if file.name.lower().endswith(s)))]
        line_no = 0
        try:
            with _open_lines(file) as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        passage = _jsonl_passage(line, file, stem, line_no)
                    except DocumentFormatError as exc:
                        self._bad(str(file), line_no, _without_location(str(exc), f"{file}:{line_no}"))
                        continue
                    if passage is not None:
                        yield passage
        except UnicodeDecodeError as exc:
            # The decoder reads ahead, so the line is approximate; the rest of the file cannot be trusted.
            self._bad(str(file), line_no + 1, f"not UTF-8 text near this line ({exc.reason}); rest of file skipped")
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            self._bad(str(file), None, f"damaged gzip file ({exc}); rest of file skipped")


def _where(passage: Passage, file: Path) -> str:
    line = passage.metadata.get("line")
    return f"{file}:{line}" if line is not None else f"{file} ({passage.id})"


def _without_location(message: str, location: str) -> str:
    prefix = f"{location}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
