"""Choose the relevance thresholds of the `label` stage on NQ-20 dev.

For each relevance source (query likelihood under the scorer LM, embedding cosine) it scores every
passage of the first N dev questions and picks the threshold that maximises F1 of "this passage holds
the answer". Run: `.venv/bin/python benchmarks/label_thresholds.py --n 30`.
"""

from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.models import ModelRegistry
from ragctx.scoring.relevance import QueryLikelihoodScorer, embedding_relevance
from ragctx.settings import load_settings


def best_threshold(scores: list[float], gold: list[bool]) -> tuple[float, float]:
    best = (float("-inf"), 0.0)
    for t in sorted(set(scores)):
        tp = sum(s >= t and g for s, g in zip(scores, gold, strict=True))
        fp = sum(s >= t and not g for s, g in zip(scores, gold, strict=True))
        fn = sum(s < t and g for s, g in zip(scores, gold, strict=True))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best[1]:
            best = (t, f1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    path = find_nq20()
    if path is None:
        raise SystemExit("../shared/data/nq20 not found")
    questions = load_nq20(path, args.n)
    models = ModelRegistry(load_settings())
    ql = QueryLikelihoodScorer(models.scorer())
    embedder = models.embedder()
    scores: dict[str, list[float]] = {"lm": [], "embedding": []}
    gold: list[bool] = []
    for q in tqdm(questions, unit="q"):
        scores["lm"] += ql.score(q.question, q.passages)
        scores["embedding"] += embedding_relevance(embedder, q.question, q.passages)
        gold += [i == q.gold_index for i in range(len(q.passages))]
    result = {}
    for source, values in scores.items():
        t, f1 = best_threshold(values, gold)
        # top-1 accuracy: is the gold passage the best-scored one of its question?
        k = len(questions[0].passages)
        per_question = [values[j * k : (j + 1) * k] for j in range(len(questions))]
        top1 = sum(row.index(max(row)) == q.gold_index for row, q in zip(per_question, questions, strict=True)) / len(
            questions
        )
        result[source] = {"threshold": round(t, 3), "f1": round(f1, 3), "gold_top1": round(top1, 3)}
    print(json.dumps({"questions": len(questions), **result}, indent=1))


if __name__ == "__main__":
    main()
