"""EXIT on HotpotQA supporting facts: sentence precision and recall at tau = 0.5, and the speed-up of the
shared-prefix batched path over encoding every sentence's prompt on its own (selections must match).
Run: `.venv/bin/python benchmarks/exit_hotpotqa.py --questions 15`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragctx.bench.data import find_nq20
from ragctx.compressors.exit import DEFAULT_TAU, ExitLMScorer
from ragctx.compressors.selection import Unit
from ragctx.config import load_settings
from ragctx.models import ModelRegistry
from ragctx.pipeline.state import PipelineState
from ragctx.types import Passage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--questions", type=int, default=15)
    args = ap.parse_args()
    nq = find_nq20()
    if nq is None:
        raise SystemExit("../shared/data not found")
    rows = json.loads((nq.parent.parent / "hotpotqa_train100" / "hotpotqa_train_100.json").read_text())
    scorer = ExitLMScorer(ModelRegistry(load_settings()).scorer())
    tp = fp = fn = 0
    batched_s = alone_s = 0.0
    mismatches = sentences = 0
    for row in rows[: args.questions]:
        support = {(t, int(i)) for t, i in row["supporting_facts"]}
        for title, sents in row["context"]:
            text, offsets, pos = "", [], 0
            for s in sents:
                offsets.append((pos + len(s) - len(s.lstrip()), pos + len(s.rstrip())))
                text += s
                pos += len(s)
            passage = Passage(title, text, title)
            keep = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]
            state = PipelineState(question=row["question"])
            state.set_passages([passage])
            t = time.perf_counter()
            batched = scorer.score(state, [Unit(0, a, b) for _, a, b in keep])
            batched_s += time.perf_counter() - t
            t = time.perf_counter()
            alone = scorer.score_one_at_a_time(row["question"], passage, [text[a:b] for _, a, b in keep])
            alone_s += time.perf_counter() - t
            for (i, _, _), pb, pa in zip(keep, batched, alone, strict=True):
                sentences += 1
                mismatches += (pb >= DEFAULT_TAU) != (pa >= DEFAULT_TAU)
                gold = (title, i) in support
                tp += pb >= DEFAULT_TAU and gold
                fp += pb >= DEFAULT_TAU and not gold
                fn += pb < DEFAULT_TAU and gold
    result = {
        "questions": args.questions,
        "sentences": sentences,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "kept_fraction": (tp + fp) / sentences,
        "batched_s": batched_s,
        "one_at_a_time_s": alone_s,
        "speedup": alone_s / batched_s,
        "selection_mismatches": mismatches,
    }
    out = Path("bench-out/exit_hotpotqa.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
