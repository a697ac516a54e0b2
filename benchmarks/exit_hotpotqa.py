"""EXIT on HotpotQA supporting facts: sentence precision and recall at tau = 0.5, and the speed-up of the
shared-prefix batched path over encoding every sentence's prompt on its own (selections must match).
Run: `.venv/bin/python benchmarks/exit_hotpotqa.py --questions 15`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragctx.compressors.exit import DEFAULT_TAU, ExitLMScorer
from ragctx.compressors.exit_training import hotpotqa_passages, hotpotqa_rows
from ragctx.compressors.selection import Unit
from ragctx.evaluation.data import find_nq20
from ragctx.models import ModelRegistry
from ragctx.settings import load_settings
from ragctx.state import PipelineState


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--questions", type=int, default=15)
    ap.add_argument("--skip", type=int, default=0, help="first question (80: the held-out 20 of train exit)")
    args = ap.parse_args()
    nq = find_nq20()
    if nq is None:
        raise SystemExit("../shared/data not found")
    rows = hotpotqa_rows(nq.parent.parent / "hotpotqa_train100" / "hotpotqa_train_100.json")
    scorer = ExitLMScorer(ModelRegistry(load_settings()).scorer())
    tp = fp = fn = 0
    batched_s = alone_s = 0.0
    mismatches = sentences = 0
    for row in rows[args.skip : args.skip + args.questions]:
        for lp in hotpotqa_passages(row):
            passage, text = lp.passage, lp.passage.text
            state = PipelineState(question=row["question"])
            state.set_passages([passage])
            t = time.perf_counter()
            batched = scorer.score(state, [Unit(0, a, b) for a, b in lp.sentences])
            batched_s += time.perf_counter() - t
            t = time.perf_counter()
            alone = scorer.score_one_at_a_time(row["question"], passage, [text[a:b] for a, b in lp.sentences])
            alone_s += time.perf_counter() - t
            for gold, pb, pa in zip(lp.supporting, batched, alone, strict=True):
                sentences += 1
                mismatches += (pb >= DEFAULT_TAU) != (pa >= DEFAULT_TAU)
                tp += pb >= DEFAULT_TAU and gold
                fp += pb >= DEFAULT_TAU and not gold
                fn += pb < DEFAULT_TAU and gold
    result = {
        "questions": args.questions,
        "skip": args.skip,
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
