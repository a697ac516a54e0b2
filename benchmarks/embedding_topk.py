"""The 'embedding top-k passages' bar of `../shared/reference/baselines.md`, on the bench's own questions.

That note keeps the k passages nearest to the question whole (k = 1, 2, 5 for rates 0.05, 0.1, 0.25, so
the kept ratio lands a little over the rate) and measured it on questions that are not in
`../shared/data`. `ragctx bench --methods embed-passages` instead holds the budget strictly, so at one
passage's worth of budget the best passage often does not fit. This script runs ragctx's own
`embed-passages` stage with `Budget(top_k=k)` on the first `--n` NQ-20 dev questions (the bench's) so
the bar and the bench rows come from the same questions, tokenizer and machine.

  python benchmarks/embedding_topk.py --n 100 --k 1,2,5 --bench bench-out/bench.json --plot docs/bench-low-ratios.png

With `--bench` (a `ragctx bench` result on the same questions) and `--plot`, draws answer recall against
the kept ratio for the bench's compressing methods and these top-k points in one figure. With
`--same-tokens embed-passages+ehpc`, also runs that pipeline on every question with exactly the tokens the
top-k passages spent on it (`Budget(tokens=...)`): the two compared at equal cost per question.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from ragctx.engine import ContextEngine
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.evaluation.metrics import has_answer, median_p90
from ragctx.settings import load_settings
from ragctx.state import Budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="first n dev questions (the bench's)")
    ap.add_argument("--skip", type=int, default=0, help="start after this many questions (tuning rows: 200)")
    ap.add_argument("--k", default="1,2,5", help="comma-separated passage counts")
    ap.add_argument("--bench", type=Path, help="bench.json of `ragctx bench` on the same questions")
    ap.add_argument("--plot", type=Path, help="PNG to write (needs --bench)")
    ap.add_argument(
        "--same-tokens",
        default="",
        help="also run this pipeline (e.g. embed-passages+ehpc) on each question with the tokens top-k spent on it",
    )
    args = ap.parse_args()
    if args.plot and not args.bench:
        ap.error("--plot needs --bench")
    path = find_nq20()
    if path is None:
        raise SystemExit("../shared/data/nq20/nq20_dev.jsonl.gz not found")
    questions = load_nq20(path, args.n, skip=args.skip)
    engine = ContextEngine(load_settings())
    pipe = engine.pipeline(stages=["embed-passages"])
    pipe.run(questions[0].question, questions[0].passages, Budget(top_k=1))  # load the embedder untimed
    matched = engine.pipeline(stages=args.same_tokens.split("+")) if args.same_tokens else None
    if matched is not None:
        matched.run(questions[0].question, questions[0].passages, Budget(rate=0.1))  # load its models untimed
    # The per-question spread shows what holding the budget costs: the note's rate for k is k x 0.05.
    print(
        "| method | n | answer recall | kept ratio | per-question kept ratio p90 (max) | share above k x 0.05 "
        "| ms per query, median (p90) |"
    )
    print("|---|---|---|---|---|---|---|")
    points: list[tuple[float, float]] = []
    for k in (int(x) for x in args.k.split(",")):
        hits, tin, tout, ms, ratios = 0, 0, 0, [], []
        m_hits, m_tout, m_ms = 0, 0, []
        for q in tqdm(questions, desc=f"top-{k}", unit="q", leave=False):
            started = time.perf_counter()
            ctx = pipe.run(q.question, q.passages, Budget(top_k=k))
            ms.append((time.perf_counter() - started) * 1000)
            hits += has_answer(ctx.text, q.answers)
            tin += ctx.tokens_in
            tout += ctx.tokens_out
            ratios.append(ctx.tokens_out / ctx.tokens_in)
            if matched is not None:
                started = time.perf_counter()
                m_ctx = matched.run(q.question, q.passages, Budget(tokens=max(1, ctx.tokens_out)))
                m_ms.append((time.perf_counter() - started) * 1000)
                m_hits += has_answer(m_ctx.text, q.answers)
                m_tout += m_ctx.tokens_out
        med, p90 = median_p90(ms)
        n = len(questions)
        over = sum(r > 0.05 * k for r in ratios) / n
        spread = f"{median_p90(ratios)[1]:.3f} ({max(ratios):.3f})"
        print(
            f"| embedding top-{k} passages | {n} | {hits / n:.2f} | {tout / tin:.3f} | {spread} | {over:.2f} "
            f"| {med:.0f} ({p90:.0f}) |"
        )
        points.append((tout / tin, hits / n))
        if matched is not None:
            med, p90 = median_p90(m_ms)
            print(
                f"| {args.same_tokens}, top-{k}'s tokens per question | {n} | {m_hits / n:.2f} | {m_tout / tin:.3f} "
                f"| – | – | {med:.0f} ({p90:.0f}) |"
            )
    if args.plot:
        plot(json.loads(args.bench.read_text()), points, args.plot)


def plot(bench: dict, topk: list[tuple[float, float]], path: Path) -> None:
    """Answer recall against kept ratio: the bench's budgeted methods and the whole-passage top-k points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by_method: dict[str, list[tuple[float, float]]] = {}
    for row in bench["rows"]:
        if row["target_rate"] is not None and row["answer_recall"] is not None:
            by_method.setdefault(row["method"], []).append((row["kept_ratio"], row["answer_recall"]))
    for method, pts in by_method.items():
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{method} (budget held)")
    xs, ys = zip(*sorted(topk), strict=True)
    ax.plot(xs, ys, marker="s", linestyle="--", color="black", label="embedding top-k whole passages")
    ax.set(
        xlabel="kept ratio (tokens out / tokens in)",
        ylabel="answer recall",
        title=f"NQ-20 dev, n={bench['rows'][0]['n']}",
    )
    ax.set_xlim(0, max(0.3, max(xs) * 1.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")  # write, then rename (as the bench's plot): no half-written figure
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
