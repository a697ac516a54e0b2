"""Distillation examples for CompLLM from the shared data: (context, question, answer) triples.

- NQ (nq20 dev): the gold passage, the question, the first gold answer. Rows before `nq_skip` are left
  out: they are the ones the benchmark evaluates on.
- HotpotQA: the supporting paragraphs; MuSiQue: the supporting paragraphs (answerable questions).
The answer is the data set's gold answer (the paper distils on answers the model generates itself;
gold answers spare a generation pass and the loss matches hidden states either way).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DistillExample:
    context: str
    question: str
    answer: str


def block(title: str, text: str) -> str:
    """One passage as CompLLM compresses it (the same in training and at answer time)."""
    return f"Document (Title: {title}) {text}\n" if title else f"Document: {text}\n"


def nq_examples(path: Path, skip: int) -> list[DistillExample]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip:
                continue
            row = json.loads(line)
            gold = row["passages"][row["gold_index"]]
            out.append(DistillExample(block(gold["title"], gold["text"]), row["question"], row["answers"][0]))
    return out


def hotpot_examples(path: Path) -> list[DistillExample]:
    out = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        support = {t for t, _ in row["supporting_facts"]}
        ctx = "".join(block(t, "".join(s).strip()) for t, s in row["context"] if t in support)
        out.append(DistillExample(ctx, row["question"], row["answer"]))
    return out


def musique_examples(path: Path) -> list[DistillExample]:
    out = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        paras = [p for p in row["paragraphs"] if p.get("is_supporting")]
        if not paras or not row.get("answerable", True):
            continue
        ctx = "".join(block(p["title"], p["paragraph_text"]) for p in paras)
        out.append(DistillExample(ctx, row["question"], row["answer"]))
    return out


def training_examples(data_dir: Path, nq_skip: int = 200, seed: int = 0) -> list[DistillExample]:
    """All examples, shuffled with `seed`."""
    examples = nq_examples(data_dir / "nq20" / "nq20_dev.jsonl.gz", nq_skip)
    examples += hotpot_examples(data_dir / "hotpotqa_train100" / "hotpotqa_train_100.json")
    examples += musique_examples(data_dir / "musique_train100" / "musique_ans_train_100.json")
    random.Random(seed).shuffle(examples)
    return examples


def write_jsonl(examples: list[DistillExample], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(e)) + "\n" for e in examples), encoding="utf-8")


def read_jsonl(path: Path) -> list[DistillExample]:
    with path.open(encoding="utf-8") as fh:
        return [DistillExample(**json.loads(line)) for line in fh if line.strip()]
