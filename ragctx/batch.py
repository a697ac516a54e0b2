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


def read_requests(path: Path) -> Iterator[CompressRequest]:
    """Parse `{"question": str, "passages": [{"id","title","text"}]}` lines; errors name file and line."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
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
            yield CompressRequest(n, obj["question"], passages)
