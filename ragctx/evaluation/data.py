"""NQ-20 questions from ../shared/data (stdlib only, so GPU scripts can load them without our extras)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from ragctx.types import Passage


def find_nq20() -> Path | None:
    """`../shared/data/nq20/nq20_dev.jsonl.gz` beside the checkout or the working directory."""
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        candidate = base.parent / "shared" / "data" / "nq20" / "nq20_dev.jsonl.gz"
        if candidate.is_file():
            return candidate
    return None


@dataclass
class Question:
    qid: str
    question: str
    answers: list[str]
    passages: list[Passage]
    gold_index: int


def load_nq20(path: Path, n: int, skip: int = 0, passages_per_question: int | None = None) -> list[Question]:
    """The first `n` questions after `skip`; with `passages_per_question` K, the gold passage and the
    first K-1 others, in their original relative order."""
    out: list[Question] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if len(out) >= n:
                break
            if i < skip:
                continue
            row = json.loads(line)
            passages = [Passage(id=p["id"], title=p["title"], text=p["text"]) for p in row["passages"]]
            gold = row["gold_index"]
            if passages_per_question is not None and passages_per_question < len(passages):
                others = [j for j in range(len(passages)) if j != gold][: passages_per_question - 1]
                keep = sorted({gold, *others})
                gold = keep.index(gold)
                passages = [passages[j] for j in keep]
            out.append(Question(str(row["qid"]), row["question"], row["answers"], passages, gold))
    return out
