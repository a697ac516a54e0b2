"""Calibrates `relevance_floor`: the titled MiniLM cosine below which a passage is not relevant.

On NQ-20 dev tuning rows (default 100-599, after the bench's first 100), it embeds every question and
passage as `embed-passages` does (passage under its title) and compares three populations: the gold
passage of each question, its 19 look-alike distractors, and the 20 passages of *another* question
(unrelated by construction, the "no relevant passage" case). The floor is the largest value that keeps
at least `--keep-gold` of the gold passages; the script reports how many unrelated passages it removes.

  python benchmarks/relevance_floor.py --out benchmarks/results/relevance_floor.json --plot docs/relevance-floor.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.io import atomic_write, save_figure
from ragctx.models import ModelRegistry
from ragctx.settings import load_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", type=int, default=100, help="first dev row used (the bench uses rows 0-99)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--keep-gold", type=float, default=0.995, help="share of gold passages the floor must keep")
    ap.add_argument("--unrelated-quantile", type=float, default=0.95)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/relevance_floor.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    data = find_nq20()
    assert data is not None, "../shared/data/nq20 not found"
    questions = load_nq20(data, args.n, skip=args.skip)
    embedder = ModelRegistry(load_settings()).embedder()

    def enc(texts: list[str]) -> np.ndarray:
        return embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)

    qv = enc([q.question for q in questions])
    gold, distractor, unrelated = [], [], []
    pv = [enc([p.titled(p.text) for p in q.passages]) for q in questions]
    for i, q in enumerate(questions):
        cos = pv[i] @ qv[i]
        gold.append(float(cos[q.gold_index]))
        distractor += [float(c) for j, c in enumerate(cos) if j != q.gold_index]
        other = pv[(i + 1) % len(questions)] @ qv[i]
        unrelated.append(other.tolist())
    flat_unrelated = [c for row in unrelated for c in row]
    floor = float(np.quantile(flat_unrelated, args.unrelated_quantile))
    floor = float(np.floor(floor * 100) / 100)  # a round value, at or below the quantile
    gold_kept = float(np.mean([g >= floor for g in gold]))
    assert gold_kept >= args.keep_gold, f"a floor of {floor} keeps only {gold_kept:.3f} of the gold passages"
    result = {
        "rows": [args.skip, args.skip + len(questions)],
        "keep_gold": args.keep_gold,
        "floor": floor,
        "gold_kept": gold_kept,
        "distractors_kept": float(np.mean([d >= floor for d in distractor])),
        "unrelated_kept": float(np.mean([u >= floor for u in flat_unrelated])),
        "questions_with_no_unrelated_kept": float(np.mean([max(r) < floor for r in unrelated])),
        "gold_cosine_quantiles": {q: float(np.quantile(gold, q)) for q in (0.005, 0.01, 0.05, 0.5)},
        "unrelated_cosine_quantiles": {q: float(np.quantile(flat_unrelated, q)) for q in (0.5, 0.95, 0.99, 1.0)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        bins = np.linspace(-0.2, 1.0, 61)
        ax.hist(flat_unrelated, bins, alpha=0.5, density=True, label="another question's passages")
        ax.hist(distractor, bins, alpha=0.5, density=True, label="look-alike distractors")
        ax.hist(gold, bins, alpha=0.6, density=True, label="gold passage")
        ax.axvline(floor, color="k", ls="--", label=f"floor {floor:g}")
        ax.set_xlabel("titled MiniLM cosine to the question")
        ax.set_ylabel("density")
        ax.set_title(f"NQ-20 dev rows {args.skip}-{args.skip + len(questions) - 1}")
        ax.legend(fontsize=8)
        save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
