"""Batch compression for people with their own retriever: JSONL of questions with passages in, JSONL out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragctx.types import Passage


class InputError(ValueError):
    """Bad input; the message names the file and line."""


@dataclass
class CompressRequest:
    line: int
    question: str
    passages: list[Passage]
    # Gold answers, when the line gives them (`"answers": [str, ...]`, as NQ-20 does): reports mark
    # whether each survived.
    answers: list[str] | None = None


def _passage(obj: Any, where: str, k: int) -> Passage:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise InputError(f'{where}: passages[{k}] must be an object with a string "text"')
    pid = obj.get("id", str(k))
    meta = {key: v for key, v in obj.items() if key not in {"id", "title", "text", "score"}}
    score = obj.get("score")
    return Passage(
        id=str(pid),
        text=obj["text"],
        title=str(obj.get("title") or ""),
        metadata=meta,
        score=float(score) if isinstance(score, int | float) else None,
    )


def read_requests(path: Path, max_passage_chars: int | None = None) -> Iterator[CompressRequest]:
    """Parse `{"question": str, "passages": [{"id","title","text"}]}` lines; errors name file and line
    (bytes that are not UTF-8 too, and passages longer than `max_passage_chars`)."""
    with open(path, "rb") as fh:
        for n, raw_line in enumerate(fh, 1):
            where = f"{path}:{n}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{where}: not UTF-8 (byte {exc.object[exc.start]:#04x} at column {exc.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
                raise InputError(f'{where}: expected an object with a non-empty string "question"')
            raw = obj.get("passages")
            if not isinstance(raw, list):
                raise InputError(f'{where}: "passages" must be a list')
            passages = [_passage(p, where, k) for k, p in enumerate(raw)]
            ids = [p.id for p in passages]
            if len(set(ids)) != len(ids):
                raise InputError(f"{where}: passage ids must be unique")
            for k, p in enumerate(passages):
                if max_passage_chars is not None and len(p.text) > max_passage_chars:
                    raise InputError(
                        f"{where}: passages[{k}] has {len(p.text)} characters, more than max_passage_chars "
                        f"({max_passage_chars}); split it into passages or raise the limit"
                    )
            answers = obj.get("answers")
            if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
                raise InputError(f'{where}: "answers" must be a list of strings')
            yield CompressRequest(n, obj["question"], passages, answers)


class ResumableOutput:
    """JSONL output written line by line to a hidden partial file (`.out.jsonl.partial`), renamed into
    place when complete. A killed run leaves the partial file; `resume=True` keeps its valid prefix (the
    lines of the same job, up to a torn last line) and continues after it, so the finished file equals an
    uninterrupted run's. The first line of the partial file fingerprints the job (input, method, budget,
    settings): a different job never resumes another's lines."""

    def __init__(self, path: Path, fingerprint: str, resume: bool) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.fingerprint = fingerprint
        self.lines: list[str] = self._valid_prefix() if resume else []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.partial, "w", encoding="utf-8")  # noqa: SIM115 (closed by finish/close)
        self._fh.write(json.dumps({"ragctx_partial": fingerprint}) + "\n")
        self._fh.writelines(self.lines)
        self._fh.flush()

    @property
    def done(self) -> int:
        return len(self.lines)

    def _valid_prefix(self) -> list[str]:
        if not self.partial.exists():
            return []
        with open(self.partial, encoding="utf-8", errors="replace") as fh:
            head = fh.readline()
            try:
                theirs = json.loads(head).get("ragctx_partial")
            except (json.JSONDecodeError, AttributeError):
                theirs = None
            if theirs != self.fingerprint:
                raise InputError(
                    f"{self.partial} belongs to another job (other input, method, budget or settings); "
                    "run without --resume to start over"
                )
            lines = []
            for line in fh:
                if not line.endswith("\n"):
                    break  # torn by the kill
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break
                lines.append(line)
        return lines

    def write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False) + "\n"
        self._fh.write(line)
        self._fh.flush()
        self.lines.append(line)

    def finish(self) -> None:
        """Everything written: the output appears complete, in one rename."""
        from ragctx.io import atomic_write

        self._fh.close()
        with atomic_write(self.path) as fh:
            fh.writelines(self.lines)
        self.partial.unlink()

    def close(self) -> None:
        """Stopped early (an error, Ctrl-C): the partial file stays for --resume; no output appears."""
        self._fh.close()
