"""The benchmark harness: NQ-20 questions through each method at each target rate.

Every row reports tokens in and out (target tokenizer), the achieved kept ratio, answer recall (a
normalised gold answer survives in the context), reader accuracy (the local reader's answer contains a
normalised gold answer) on the first `reader_limit` questions, and milliseconds per stage.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ragctx.engine import ContextEngine
from ragctx.evaluation.data import Question, load_nq20
from ragctx.evaluation.metrics import has_answer, median_p90
from ragctx.io import atomic_write
from ragctx.registry import compressors, known_stage_names
from ragctx.settings import Settings
from ragctx.state import Budget

REORDER_BASELINES = ["reorder-lim-langchain"]


@dataclass
class BenchConfig:
    data: Path
    n: int = 100
    reader_limit: int = 20
    rates: list[float] = field(default_factory=lambda: [0.5, 0.25])
    methods: list[str] = field(default_factory=lambda: ["truncate", "random-drop"])
    out: Path = Path("bench-out")
    passages: int | None = None  # passages per question (gold kept); None = all 20

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("--n must be at least 1")
        if not 0 <= self.reader_limit <= self.n:
            raise ValueError("--reader-limit must be between 0 and --n")
        if not self.rates or any(not 0 < r <= 1 for r in self.rates):
            raise ValueError("--rates must be in (0, 1]")
        names = known_stage_names() - {"retrieve"}
        unknown = [m for m in self.methods if any(part not in names for part in m.split("+"))]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {sorted(known_stage_names() - {'retrieve'})}")


@dataclass
class Row:
    method: str
    target_rate: float | None
    n: int
    tokens_in: float
    tokens_out: float
    kept_ratio: float
    answer_recall: float | None
    reader_n: int
    reader_accuracy: float | None
    stage_ms: dict[str, tuple[float, float]]
    reader_ms: tuple[float, float] | None


@dataclass
class BenchReport:
    rows: list[Row]
    meta: dict[str, Any]
    markdown: str


def _row(method: str, rate: float | None, samples: list[dict[str, Any]]) -> Row:
    stage_ms: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for name, ms in s["stage_ms"].items():
            stage_ms[name].append(ms)
    answered = [s for s in samples if "correct" in s]
    tin = sum(s["tokens_in"] for s in samples)
    tout = sum(s["tokens_out"] for s in samples)
    recall = [s["recall"] for s in samples if s["recall"] is not None]
    return Row(
        method=method,
        target_rate=rate,
        n=len(samples),
        tokens_in=tin / len(samples),
        tokens_out=tout / len(samples),
        kept_ratio=tout / tin if tin else 0.0,
        answer_recall=sum(recall) / len(recall) if recall else None,
        reader_n=len(answered),
        reader_accuracy=(sum(s["correct"] for s in answered) / len(answered)) if answered else None,
        stage_ms={k: median_p90(v) for k, v in stage_ms.items()},
        reader_ms=median_p90([s["reader_ms"] for s in answered]) if answered else None,
    )


def run_bench(settings: Settings, cfg: BenchConfig) -> BenchReport:
    questions = load_nq20(cfg.data, cfg.n, passages_per_question=cfg.passages)
    engine = ContextEngine(settings)
    if "attnrank" in cfg.methods:
        _ensure_attnrank_profile(engine, cfg, len(questions[0].passages))
    reader = engine.local_reader() if cfg.reader_limit else None
    full_tokens: list[int] = []

    def answer(q: Question, context: str | None, i: int, sample: dict[str, Any]) -> None:
        if reader is None or i >= cfg.reader_limit:
            return
        started = time.perf_counter()
        out = reader.answer(q.question, context)
        sample["reader_ms"] = (time.perf_counter() - started) * 1000
        sample["correct"] = has_answer(out, q.answers)
        sample["answer"] = out

    configs: list[tuple[str, float | None]] = [("none", None)]
    configs += [(m, None) for m in REORDER_BASELINES]
    configs += [(m, r) for m in cfg.methods if _compresses(m) for r in cfg.rates]
    configs += [(m, None) for m in cfg.methods if not _compresses(m) and m not in REORDER_BASELINES]
    rows: list[Row] = []
    per_question: dict[str, list[dict[str, Any]]] = {}
    for method, rate in configs:
        stages = [] if method == "none" else method.split("+")
        pipe = engine.pipeline(stages=stages)
        samples = []
        label = method if rate is None else f"{method}@{rate}"
        for i, q in enumerate(tqdm(questions, desc=label, unit="q", leave=False)):
            ctx = pipe.run(q.question, q.passages, Budget(rate=rate) if rate else Budget(), seed=settings.seed)
            if method == "none":
                full_tokens.append(ctx.tokens_in)
            sample: dict[str, Any] = {
                "qid": q.qid,
                "tokens_in": ctx.tokens_in,
                "tokens_out": ctx.tokens_out,
                "recall": has_answer(ctx.text, q.answers),
                "stage_ms": {s.name: s.ms for s in ctx.stats},
            }
            answer(q, ctx.text, i, sample)
            samples.append(sample)
        rows.append(_row(method, rate, samples))
        per_question[label] = samples

    # Reference rows: no context at all, and the gold passage alone.
    for label in ("closed-book", "gold-only"):
        samples = []
        for i, q in enumerate(tqdm(questions, desc=label, unit="q", leave=False)):
            if label == "gold-only":
                gold = q.passages[q.gold_index]
                ctx = engine.pipeline(stages=[]).run(q.question, [gold])
                text: str | None = ctx.text
                tout = ctx.tokens_out
            else:
                text, tout = None, 0
            sample = {
                "qid": q.qid,
                "tokens_in": full_tokens[i],
                "tokens_out": tout,
                "recall": has_answer(text, q.answers) if text is not None else None,
                "stage_ms": {},
            }
            answer(q, text, i, sample)
            samples.append(sample)
        rows.append(_row(label, None, samples))
        per_question[label] = samples

    meta = {
        "data": str(cfg.data),
        "n": cfg.n,
        "passages_per_question": len(questions[0].passages),
        "reader_limit": cfg.reader_limit,
        "tokenizer": engine.counter.name,
        "reader": settings.reader_model,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model_load_ms": engine.models.load_ms,
    }
    md = to_markdown(rows, meta)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(cfg.out / "bench.json") as fh:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows], "per_question": per_question}, fh, indent=1)
    with atomic_write(cfg.out / "bench.md") as fh:
        fh.write(md + "\n")
    plot(rows, cfg.out / "bench.png")
    return BenchReport(rows, meta, md)


def _compresses(method: str) -> bool:
    """A method (or `a+b` chain) with a compression stage: it gets one row per target rate."""
    return any(part in compressors() for part in method.split("+"))


def _ensure_attnrank_profile(engine: ContextEngine, cfg: BenchConfig, k: int) -> None:
    """Calibrate on 20 dev questions that follow the evaluated ones (no overlap) if no profile exists."""
    from ragctx.reordering.calibration import attnrank_path, calibrate_attnrank

    lm = engine.models.reader()
    cache = engine.settings.resolved_cache_dir()
    if not attnrank_path(cache, lm, k).is_file():
        held_out = load_nq20(cfg.data, 20, skip=cfg.n, passages_per_question=k)
        calibrate_attnrank(lm, cache, k, [(q.question, q.passages) for q in held_out])


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def to_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"NQ-20 dev, first {meta['n']} questions, {meta['passages_per_question']} passages each; "
        f"reader accuracy on the first {meta['reader_limit']}; "
        f"tokens counted with {meta['tokenizer']}.",
        "",
        "| method | target rate | tokens in | tokens out | kept ratio | answer recall | reader acc. (n) "
        "| compress ms median (p90) | reader ms median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = [v for k, v in r.stage_ms.items()]
        total = f"{sum(m for m, _ in ms):.1f} ({sum(p for _, p in ms):.1f})" if ms else "–"
        acc = f"{_fmt(r.reader_accuracy)} ({r.reader_n})" if r.reader_accuracy is not None else "–"
        reader_ms = f"{r.reader_ms[0]:.0f}" if r.reader_ms else "–"
        lines.append(
            f"| {r.method} | {_fmt(r.target_rate)} | {r.tokens_in:.0f} | {r.tokens_out:.0f} | "
            f"{r.kept_ratio:.2f} | {_fmt(r.answer_recall)} | {acc} | {total} | {reader_ms} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Reader accuracy and answer recall against the kept ratio; one colour per method in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_method[r.method].append(r)
    colours = plt.get_cmap("tab10")
    markers = "osD^v<>pPX*h"
    for n, (method, rs) in enumerate(by_method.items()):
        rs = sorted(rs, key=lambda r: r.kept_ratio)
        xs = [r.kept_ratio for r in rs]
        style = {"color": colours(n % 10), "marker": markers[n % len(markers)], "label": method, "alpha": 0.85}
        style["linestyle"] = "-" if len(rs) > 1 else "none"
        if any(r.reader_accuracy is not None for r in rs):
            axes[0].plot(xs, [r.reader_accuracy or 0 for r in rs], **style)
        if any(r.answer_recall is not None for r in rs):
            axes[1].plot(xs, [r.answer_recall or 0 for r in rs], **style)
    axes[0].set(xlabel="kept ratio (tokens out / tokens in)", ylabel="reader accuracy", title="Reader accuracy")
    axes[1].set(xlabel="kept ratio (tokens out / tokens in)", ylabel="answer recall", title="Answer recall")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.03, 1.05)
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def best_method(rows: list[dict[str, Any]], rates: list[float]) -> str:
    """The method (or chain) with the highest mean answer recall over `rates`, among those measured at
    every one of them: the rule that picks the default (`DEFAULT_METHOD`) from a bench table."""
    recall: dict[str, dict[float, float]] = {}
    for r in rows:
        if r.get("target_rate") is not None and r.get("answer_recall") is not None:
            recall.setdefault(r["method"], {})[float(r["target_rate"])] = float(r["answer_recall"])
    complete = {m: sum(by[x] for x in rates) / len(rates) for m, by in recall.items() if all(x in by for x in rates)}
    if not complete:
        raise ValueError(f"no method was measured at every rate of {rates}")
    return max(complete, key=lambda m: complete[m])  # max keeps the first of equals
