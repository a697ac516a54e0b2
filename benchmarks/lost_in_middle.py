"""Passage orders and passage scores on NQ-20 (issue 3): the lost-in-the-middle curve, ROC AUC, costs.

1. Curve: for each question the gold passage is moved to slot s (1, 5, 10, 15, 20; the 19 others keep
   their retriever order), each ordering method reorders the 20 passages with the pipeline's own stages,
   and the local reader answers from the rendered context. Accuracy per (method, slot), one PNG line per
   method. `attnrank` is fed the passages sorted by embedding relevance (as a pipeline runs it after a
   relevance stage); `lim-llamaindex` sorts by the same scores; the others use positions only.
2. AUC: how well each passage score separates the gold passage from the 19 others (embedding cosine,
   query likelihood, distracting effect), and reader accuracy with the label stage's drop policy.
3. Costs: milliseconds to score the 20 passages of a question with each scorer, and attention sorting
   for 1..k rounds.

On a bare GPU machine (torch + transformers + our wheels): compute the embedding scores here first with
`--save-relevance F`, then run there with `--relevance F --model M.gguf --device cuda`.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragctx.evaluation.data import Question, find_nq20, load_nq20  # noqa: E402
from ragctx.evaluation.metrics import has_answer, roc_auc  # noqa: E402
from ragctx.models import LanguageModel, ModelNotFoundError, load_lm  # noqa: E402
from ragctx.reader import LocalReader  # noqa: E402
from ragctx.reordering.attention_sort import AttentionSortStage  # noqa: E402
from ragctx.reordering.attnrank import AttnRankStage  # noqa: E402
from ragctx.reordering.calibration import attnrank_path, calibrate_attnrank  # noqa: E402
from ragctx.reordering.orders import ReorderStage  # noqa: E402
from ragctx.scoring.abstention import check_abstention  # noqa: E402
from ragctx.scoring.distraction import DistractionScorer  # noqa: E402
from ragctx.scoring.relevance import QueryLikelihoodScorer, embedding_relevance  # noqa: E402
from ragctx.state import PipelineState, render  # noqa: E402
from ragctx.types import Passage  # noqa: E402

METHODS = ["retriever", "inverse", "shuffle", "lim-langchain", "lim-llamaindex", "attention-sort", "attnrank"]
EMBED_THRESHOLD = 0.59  # the label stage's default (scoring/labels.py)
DE_THRESHOLD = 0.8


def with_gold_at(q: Question, slot: int) -> list[Passage]:
    others = [p for i, p in enumerate(q.passages) if i != q.gold_index]
    return others[: slot - 1] + [q.passages[q.gold_index]] + others[slot - 1 :]


def state_of(question: str, passages: list[Passage], seed: int = 0) -> PipelineState:
    state = PipelineState(question, seed=seed)
    state.set_passages(passages)
    return state


@functools.cache
def embedder(device: str = "auto") -> Any:
    """The embedded embedder, loaded once; None on a machine without it (scores then come from --relevance)."""
    from ragctx.models import default_embedder_path, load_embedder

    try:
        return load_embedder(str(default_embedder_path()), device)
    except (ImportError, ModelNotFoundError):
        return None


def embedding_scores(questions: list[Question], device: str) -> dict[str, dict[str, float]]:
    model = embedder(device)
    if model is None:
        sys.exit("the embedder is not installed here: pass --relevance FILE")
    return {
        q.qid: dict(zip([p.id for p in q.passages], embedding_relevance(model, q.question, q.passages), strict=True))
        for q in questions
    }


class Orders:
    """Each method as the pipeline's stage, applied to a PipelineState holding the 20 passages."""

    def __init__(self, lm: LanguageModel, cache_dir: Path, rounds: int) -> None:
        self.sort = AttentionSortStage(lm, rounds=rounds)
        self.attnrank = AttnRankStage(lm, cache_dir)

    def apply(self, method: str, question: str, passages: list[Passage], seed: int) -> list[Passage]:
        if method == "attnrank":  # relevance first, as after a relevance stage
            passages = sorted(passages, key=lambda p: -(p.score or 0.0))
        state = state_of(question, passages, seed)
        if method in {"inverse", "shuffle", "lim-langchain", "lim-llamaindex"}:
            ReorderStage(f"reorder-{method}").run(state)
        elif method == "attention-sort":
            self.sort.run(state)
        elif method == "attnrank":
            self.attnrank.run(state)
        elif method != "retriever":
            raise ValueError(f"unknown method {method!r}")
        return [r.passage for r in state.passages]


def sync(lm: LanguageModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def timed(lm: LanguageModel, fn: Callable[[], Any]) -> float:
    sync(lm)
    t0 = time.perf_counter()
    fn()
    sync(lm)
    return (time.perf_counter() - t0) * 1000


def run_curve(args: argparse.Namespace, lm: LanguageModel, questions: list[Question]) -> dict[str, Any]:
    orders = Orders(lm, args.cache_dir, args.rounds)
    reader = LocalReader(lm, max_new_tokens=args.max_new_tokens)
    requests: list[tuple[str, str | None]] = []
    index: dict[tuple[str, str], int] = {}
    cells: list[tuple[str, int, int, int]] = []  # method, slot, question index, request index
    gold_slot: dict[tuple[str, int], list[int]] = {}
    for qi, q in enumerate(questions):
        gold_id = q.passages[q.gold_index].id
        for slot in args.slots:
            base = with_gold_at(q, slot)
            for method in args.methods:
                order = orders.apply(method, q.question, base, seed=qi)
                assert sorted(p.id for p in order) == sorted(p.id for p in base)
                gold_slot.setdefault((method, slot), []).append(1 + [p.id for p in order].index(gold_id))
                key = (q.question, render(state_of(q.question, order).passages))
                if key not in index:
                    index[key] = len(requests)
                    requests.append(key)
                cells.append((method, slot, qi, index[key]))
        if (qi + 1) % 10 == 0:
            print(f"  ordered {qi + 1}/{len(questions)} questions", file=sys.stderr)
    t0 = time.perf_counter()
    answers = reader.answer_many(requests, batch_size=args.batch_size)
    read_s = time.perf_counter() - t0
    correct: dict[tuple[str, int], list[bool]] = {}
    for method, slot, qi, ri in cells:
        correct.setdefault((method, slot), []).append(has_answer(answers[ri], questions[qi].answers))
    accuracy = {m: {s: statistics.mean(correct[(m, s)]) for s in args.slots} for m in args.methods}
    mean_slot = {m: {s: statistics.mean(gold_slot[(m, s)]) for s in args.slots} for m in args.methods}
    return {"accuracy": accuracy, "mean_gold_slot": mean_slot, "prompts": len(requests), "read_s": read_s}


def run_auc(args: argparse.Namespace, lm: LanguageModel, questions: list[Question]) -> dict[str, Any]:
    de_scorer, ql_scorer = DistractionScorer(lm), QueryLikelihoodScorer(lm)
    scores: dict[str, tuple[list[float], list[float]]] = {
        "embedding": ([], []),
        "query_likelihood": ([], []),
        "de": ([], []),
    }
    keep_all: list[tuple[str, str | None]] = []
    dropped: list[tuple[str, str | None]] = []
    for q in questions:
        values = {
            "embedding": [p.score or 0.0 for p in q.passages],
            "query_likelihood": ql_scorer.score(q.question, q.passages),
            "de": de_scorer.score(q.question, q.passages),
        }
        for name, vals in values.items():
            scores[name][0].append(vals[q.gold_index])
            scores[name][1].extend(v for i, v in enumerate(vals) if i != q.gold_index)
        # The label stage's drop policy: distracting = not relevant (embedding) and DE >= threshold.
        keep = [
            p
            for p, rel, de in zip(q.passages, values["embedding"], values["de"], strict=True)
            if rel >= EMBED_THRESHOLD or de < DE_THRESHOLD
        ]
        for target, kept in ((keep_all, q.passages), (dropped, keep)):
            target.append((q.question, render(state_of(q.question, kept).passages) or None))
    reader = LocalReader(lm, max_new_tokens=args.max_new_tokens)
    acc = {}
    for name, reqs in (("keep_all", keep_all), ("drop_distracting", dropped)):
        answers = reader.answer_many(reqs, batch_size=args.batch_size)
        acc[name] = statistics.mean(has_answer(a, q.answers) for a, q in zip(answers, questions, strict=True))
    return {
        "auc": {name: roc_auc(pos, neg) for name, (pos, neg) in scores.items()},
        "mean_de": {"gold": statistics.mean(scores["de"][0]), "others": statistics.mean(scores["de"][1])},
        "accuracy": acc,
        "abstention_check": check_abstention(lm, args.cache_dir).__dict__,
    }


def run_costs(args: argparse.Namespace, lm: LanguageModel, questions: list[Question]) -> dict[str, Any]:
    de_scorer, ql_scorer = DistractionScorer(lm), QueryLikelihoodScorer(lm)
    orders = Orders(lm, args.cache_dir, 1)
    model = embedder(args.device)
    ms: dict[str, list[float]] = {}
    for i, q in enumerate(questions):
        jobs: dict[str, Callable[[], Any]] = {
            "distracting_effect": partial(de_scorer.score, q.question, q.passages),
            "query_likelihood": partial(ql_scorer.score, q.question, q.passages),
            "attnrank": partial(orders.apply, "attnrank", q.question, q.passages, 0),
        }
        if model is not None:
            jobs["embedding"] = partial(embedding_relevance, model, q.question, q.passages)
        for k in range(1, args.max_rounds + 1):
            jobs[f"attention_sort_{k}"] = partial(
                AttentionSortStage(lm, rounds=k).run, state_of(q.question, q.passages)
            )
        for name, job in jobs.items():
            t = timed(lm, job)
            if i > 0:  # the first question warms up
                ms.setdefault(name, []).append(t)
    return {name: {"median_ms": statistics.median(v), "n": len(v)} for name, v in ms.items()}


def plot(curve: dict[str, Any], slots: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, acc in curve["accuracy"].items():
        ax.plot(slots, [acc[str(s)] if str(s) in acc else acc[s] for s in slots], marker="o", label=method)
    ax.set_xlabel("slot of the gold passage in the retriever's order (of 20)")
    ax.set_ylabel("reader accuracy")
    ax.set_xticks(slots)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if "curve" in result:
        slots = result["slots"]
        lines += [
            "| method | " + " | ".join(f"gold at {s}" for s in slots) + " | mean |",
            "|---" * (len(slots) + 2) + "|",
        ]
        for m, acc in result["curve"]["accuracy"].items():
            vals = [acc[s] for s in slots]
            lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.mean(vals):.3f} |")
        lines += ["", "Mean final slot of the gold passage:", ""]
        for m, sl in result["curve"]["mean_gold_slot"].items():
            lines.append(f"- {m}: " + ", ".join(f"{s}→{sl[s]:.1f}" for s in slots))
    if "auc" in result:
        a = result["auc"]
        lines += ["", "| score | ROC AUC (gold vs the 19 others) |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in a["auc"].items()]
        lines += [
            "",
            f"Reader accuracy, keep all {a['accuracy']['keep_all']:.3f}, drop distracting "
            f"{a['accuracy']['drop_distracting']:.3f}; mean DE gold {a['mean_de']['gold']:.3f}, others "
            f"{a['mean_de']['others']:.3f}; abstention check: {a['abstention_check']}",
        ]
    if "costs" in result:
        lines += ["", "| scoring 20 passages | median ms |", "|---|---|"]
        lines += [f"| {k} | {v['median_ms']:.1f} |" for k, v in result["costs"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="NQ-20 dev questions for the curve and the AUC")
    ap.add_argument("--slots", default="1,5,10,15,20")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=1, help="attention sorting rounds in the curve")
    ap.add_argument("--parts", default="curve,auc,costs")
    ap.add_argument("--cost-questions", type=int, default=11, help="questions timed (the first warms up)")
    ap.add_argument("--max-rounds", type=int, default=3, help="attention sorting rounds timed: 1..k")
    ap.add_argument(
        "--calibration-questions",
        type=int,
        default=16,
        help="AttnRank profile for k=20 from these dev questions (after the benchmark's)",
    )
    ap.add_argument("--model", default="default", help="scorer and reader LM (name, folder or .gguf)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=16, help="reader prompts per generate call")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--relevance", type=Path, default=None, help="embedding scores JSON (else computed here)")
    ap.add_argument("--save-relevance", type=Path, default=None, help="write embedding scores and exit")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ragctx")
    ap.add_argument("--nq", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/lost-in-middle"))
    args = ap.parse_args()
    args.slots = [int(s) for s in args.slots.split(",")]
    args.methods = args.methods.split(",")
    parts = set(args.parts.split(","))
    nq = args.nq or find_nq20()
    if nq is None:
        sys.exit("NQ-20 not found: pass --nq PATH")
    questions = load_nq20(nq, args.n)
    if args.save_relevance:
        args.save_relevance.write_text(json.dumps(embedding_scores(questions, args.device)))
        print(f"wrote {args.save_relevance}")
        return
    rel = json.loads(args.relevance.read_text()) if args.relevance else embedding_scores(questions, args.device)
    for q in questions:
        q.passages = [replace(p, score=rel[q.qid][p.id]) for p in q.passages]
    torch.manual_seed(0)
    lm = load_lm(args.model, args.cache_dir, args.device)
    result: dict[str, Any] = {"model": lm.name, "device": str(lm.device), "n": len(questions), "slots": args.slots}
    if lm.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["cpu_threads"] = torch.get_num_threads()
    if "curve" in parts and "attnrank" in args.methods and not attnrank_path(args.cache_dir, lm, 20).is_file():
        calib = load_nq20(nq, args.calibration_questions, skip=args.n)
        profile = calibrate_attnrank(lm, args.cache_dir, 20, [(q.question, q.passages) for q in calib])
        result["attnrank_profile"] = {"layer": profile.layer, "position_order": profile.position_order}
    if "curve" in parts:
        t0 = time.perf_counter()
        result["curve"] = run_curve(args, lm, questions)
        result["curve"]["seconds"] = time.perf_counter() - t0
    if "auc" in parts:
        result["auc"] = run_auc(args, lm, questions)
    if "costs" in parts:
        result["costs"] = run_costs(args, lm, questions[: args.cost_questions])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lost_in_middle.json").write_text(json.dumps(result, indent=1))
    (args.out / "lost_in_middle.md").write_text(markdown(result))
    if "curve" in result:
        try:
            plot(
                result["curve"],
                args.slots,
                args.out / "lost_in_middle.png",
                f"{Path(lm.name).name}, {len(questions)} NQ-20 questions, 20 passages",
            )
        except ImportError:
            print("matplotlib missing: no PNG (replot from the JSON)", file=sys.stderr)
    print(markdown(result))


if __name__ == "__main__":
    main()
