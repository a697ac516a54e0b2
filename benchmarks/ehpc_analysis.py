"""Why does `embed-passages+ehpc` lose answers at rates 0.1 / 0.05?  Offline analysis on TUNING rows.

Two steps:

  collect   run ragctx's own prefilter (EmbeddingPassageFilter scores through CompressStage with
            budget_scale = prefilter_scale) and EHPC (EHPCScorer, full prefill) on NQ-20 dev rows after
            `--skip` (default 200: never the first 100 the bench reports on), for every rate and for
            several passage layouts; cache per (question, rate): the 20 passages' embedding scores and
            ranks, the prefiltered passages, the sentence units with their token costs and gold flags,
            and per layout the raw per-token evaluator-head mass with character offsets and each unit's
            character range, so pooling/reduction can be recomputed offline.
  simulate  recompute unit scores for selection variants from the cache and run ragctx's own
            CompressStage (make_units -> choose -> _apply -> _enforce) with those fixed scores under the
            same budget; report answer recall, kept ratio and diagnostics.

Usage as run for the README (~30 min for the first on 2 CPU cores; --out/--cache default to bench-out/):
  python benchmarks/ehpc_analysis.py collect --n 200 --skip 200 --out cache.json  # rows 200-399
  python benchmarks/ehpc_analysis.py simulate --cache cache.json --save sim1.json  # -> sim1.txt
  python benchmarks/ehpc_analysis.py collect --n 200 --skip 200 --rates 0.1,0.05 --scale 3 \
      --orders orig --out cache-scale3.json
  python benchmarks/ehpc_analysis.py collect --n 100 --skip 200 --orders orig --heads-max-layer 17 --out cache-L17.json
  # variants by name, |-separated:
  python benchmarks/ehpc_analysis.py simulate --cache cache-L17.json --only "log(sum)+10.0*cos"
  # alternatives to the shipped scoring where the best passage must be trimmed (rates 0.1 / 0.05):
  python benchmarks/ehpc_analysis.py collect --n 200 --skip 200 --orders orig --out cache-title.json
  python benchmarks/ehpc_analysis.py alternatives --cache cache-title.json
  # the same with the attention of the answer position (a cue after the question, the last 3 positions):
  python benchmarks/ehpc_analysis.py collect --n 200 --skip 200 --rates 0.1,0.05 --orders orig \
      --answer-cue '\\nAnswer:' --cue-window 3 --out cache-cue.json
  # another scorer LM (its heads from `ragctx calibrate heads`), budgets still counted in SmolLM2 tokens:
  RAGCTX_SCORER_MODEL=model.gguf RAGCTX_TARGET_TOKENIZER=<SmolLM2 folder> python benchmarks/ehpc_analysis.py collect ...
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragctx.compressors.ehpc import EHPCScorer, layout_chunk
from ragctx.compressors.embed_passages import EmbeddingPassageFilter
from ragctx.compressors.evaluator_heads import QUESTION_PREFIX, load_heads
from ragctx.compressors.selection import CompressStage, Granularity, Unit, make_units
from ragctx.engine import ContextEngine
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.evaluation.metrics import has_answer
from ragctx.settings import load_settings
from ragctx.state import Budget, PipelineState, render

ORDERS = ("orig", "asc", "desc")  # pipeline order; most relevant last (next to the question); first


@dataclass
class Fixed:
    """A UnitScorer returning precomputed scores (keyed by unit)."""

    table: dict[tuple[int, int, int], float]
    granularity: Granularity
    name: str = "fixed"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        return [self.table[(u.passage_index, u.start, u.end)] for u in units]


def scores_in_order(
    scorer: EHPCScorer, state: PipelineState, units: Sequence[Unit], order: list[int]
) -> tuple[list[float], dict[str, Any]]:
    """EHPC's unit scores with the passages laid out in `order` (one chunk: NQ-20 contexts after the
    prefilter are far below chunk_tokens), and the raw mass of the prefill, through EHPCScorer's public
    layout, prefill and pooling (the scorer's `query_suffix` / `query_window` set the answer cue)."""
    by_passage: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        by_passage.setdefault(u.passage_index, []).append(i)
    layout = layout_chunk(state, units, by_passage, [p for p in order if p in by_passage])
    mass, offsets = scorer.prefill_mass(layout.context, QUESTION_PREFIX + state.question + scorer.query_suffix)
    per_unit = scorer.unit_scores(mass, offsets, layout.unit_ranges)
    record = {
        "context": layout.context,
        "mass": [round(float(x), 7) for x in mass],
        "offsets": offsets,
        "unit_ranges": [layout.unit_ranges[i] for i in range(len(units))],
    }
    return [per_unit.get(i, 0.0) for i in range(len(units))], record


def fresh_state(q: Any, counter: Any, rate: float) -> PipelineState:
    state = PipelineState(question=q.question, budget=Budget(rate=rate))
    state.set_passages(q.passages)
    state.reference_tokens = counter.count(render(state.passages))
    return state


def collect(args: argparse.Namespace) -> None:
    settings = load_settings()
    ehpc = settings.ehpc
    eng = ContextEngine(settings)
    counter = eng.counter
    lm = eng.models.scorer()
    heads = load_heads(settings.resolved_cache_dir(), lm)
    if args.heads_max_layer is not None:  # the best 8 calibrated heads no deeper than this layer
        from ragctx.compressors.evaluator_heads import EvaluatorHeads, select_heads

        table = torch.tensor(heads.all_scores)[: args.heads_max_layer + 1]
        pairs, values = select_heads(table, len(heads.heads))
        heads = EvaluatorHeads(heads.model, args.heads_max_layer, heads.examples, pairs, values, table.tolist())
        print("heads", pairs, flush=True)
    embed = EmbeddingPassageFilter(eng.models.embedder())
    questions = load_nq20(Path(args.data) if args.data else find_nq20(), args.n, skip=args.skip)
    rates = [float(r) for r in args.rates.split(",")]
    out: list[dict[str, Any]] = []
    started = time.time()
    for qi, q in enumerate(questions):
        st = fresh_state(q, counter, 1.0)
        punits = make_units(st, "passage", counter)
        emb = embed.score(st, punits)
        ranks = sorted(range(len(emb)), key=lambda i: -emb[i])
        rank_of = {p: r for r, p in enumerate(ranks)}
        passages = [
            {
                "title": p.title,
                "emb": emb[i],
                "rank": rank_of[i],
                "gold": i == q.gold_index,
                "has_answer": has_answer(p.text, q.answers),
                "title_has_answer": has_answer(p.title or "", q.answers),
            }
            for i, p in enumerate(q.passages)
        ]
        rec_q: dict[str, Any] = {
            "qid": q.qid,
            "question": q.question,
            "answers": q.answers,
            "gold_index": q.gold_index,
            "tokens_in": st.reference_tokens,
            "passages": passages,
            "rates": {},
        }
        for rate in rates:
            state = fresh_state(q, counter, rate)
            pre = CompressStage(
                Fixed({(u.passage_index, u.start, u.end): s for u, s in zip(punits, emb, strict=True)}, "passage"),
                counter,
                budget_scale=args.scale or settings.prefilter_scale,
            )
            pre.run(state)
            kept = [i for i, p in enumerate(state.passages) if p.spans]
            units = make_units(state, "sentence", counter)
            texts = [state.passages[u.passage_index].passage.text[u.start : u.end] for u in units]
            costs = counter.count_many(texts)
            limit = state.budget.limit(state.reference_tokens or 0)
            layouts: dict[str, Any] = {}
            for order_name in args.orders.split(","):
                by_rel = sorted(kept, key=lambda p: emb[p])  # least relevant first
                order = {"orig": sorted(kept), "asc": by_rel, "desc": by_rel[::-1]}[order_name]
                # the attention-only EHPC of HEAD (mean per unit, no passage prior): its scores are cached
                scorer = EHPCScorer(
                    lm,
                    heads,
                    ehpc.granularity,
                    ehpc.pool,
                    ehpc.chunk_tokens,
                    unit_score="mean",
                    passage_prior=0.0,
                    query_suffix=args.answer_cue.replace("\\n", "\n"),
                    query_window=args.cue_window,
                )
                t0 = time.perf_counter()
                empty: dict[str, Any] = {"mass": [], "offsets": [], "unit_ranges": [], "context": ""}
                scores, r = scores_in_order(scorer, state, units, order) if units else ([], empty)
                ms = (time.perf_counter() - t0) * 1000
                layouts[order_name] = {
                    "order": order,
                    "scores": scores,
                    "mass": r["mass"],
                    "offsets": r["offsets"],
                    "unit_ranges": r["unit_ranges"],
                    "context_chars": len(r["context"]),
                    "ms": ms,
                }
            rec_q["rates"][str(rate)] = {
                "limit": limit,
                "prefilter_limit": int(limit * (args.scale or settings.prefilter_scale)) if limit else None,
                "kept": kept,
                "units": [
                    {"p": u.passage_index, "a": u.start, "b": u.end, "cost": c, "ans": has_answer(t, q.answers)}
                    for u, t, c in zip(units, texts, costs, strict=True)
                ],
                "layouts": layouts,
            }
        out.append(rec_q)
        print(f"{qi + 1}/{len(questions)} {time.time() - started:.0f}s", flush=True)
        if (qi + 1) % 10 == 0 or qi + 1 == len(questions):
            Path(args.out).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------- simulate


def pool(mass: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return mass
    pad = k // 2
    return torch.nn.functional.avg_pool1d(mass[None, None], k, stride=1, padding=pad, count_include_pad=False)[0, 0][
        : len(mass)
    ]


def unit_token_values(pooled: torch.Tensor, offsets: list[list[int]], ranges: list[list[int]]) -> list[list[float]]:
    out = []
    for a, b in ranges:
        out.append([float(pooled[j]) for j, (x, y) in enumerate(offsets) if x < b and y > a])
    return out


REDUCE: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda v: sum(v) / len(v) if v else 0.0,
    "max": lambda v: max(v) if v else 0.0,
    "sum": lambda v: sum(v),
    "top3": lambda v: sum(sorted(v)[-3:]) / min(3, len(v)) if v else 0.0,
}


@dataclass
class Case:
    q: dict[str, Any]
    rate: str
    r: dict[str, Any]


def load_cases(path: str) -> list[Case]:
    data = json.loads(Path(path).read_text())
    return [Case(q, rate, r) for q in data for rate, r in q["rates"].items()]


def base_values(case: Case, layout: str, k: int, reduce: str) -> list[float]:
    lay = case.r["layouts"][layout]
    if not case.r["units"]:
        return []
    pooled = pool(torch.tensor(lay["mass"]), k)
    vals = unit_token_values(pooled, lay["offsets"], lay["unit_ranges"])
    return [REDUCE[reduce](v) for v in vals]


def debiased_values(case: Case, layout: str, k: int, reduce: str) -> list[float]:
    """Pooled mass divided by a per-question positional baseline: log(mass) ~ a + b*log(distance to the
    question start), fitted by least squares over all context tokens of this question."""
    lay = case.r["layouts"][layout]
    if not case.r["units"]:
        return []
    pooled = pool(torch.tensor(lay["mass"]), k)
    n_ctx = sum(1 for a, _ in lay["offsets"] if a < lay["context_chars"])
    x = torch.log(torch.arange(n_ctx, 0, -1, dtype=torch.float64))
    y = torch.log(pooled[:n_ctx].double().clamp_min(1e-9))
    xm, ym = x.mean(), y.mean()
    b = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum().clamp_min(1e-12))
    a = float(ym - b * xm)
    base = torch.ones(len(pooled), dtype=torch.float64)
    base[:n_ctx] = torch.exp(a + b * x)
    ratio = (pooled.double() / base).float()
    vals = unit_token_values(ratio, lay["offsets"], lay["unit_ranges"])
    return [REDUCE[reduce](v) for v in vals]


class Simulator:
    def __init__(self) -> None:
        settings = load_settings()
        self.eng = ContextEngine(settings)
        self.counter = self.eng.counter
        self._data: dict[str, Any] = {}

    def question(self, qid: str) -> Any:
        if not self._data:
            path = find_nq20()
            assert path is not None
            for q in load_nq20(path, 2124):
                self._data[q.qid] = q
        return self._data[qid]

    def embed_passages(self, case: Case) -> tuple[bool, int]:
        """The plain `embed-passages` baseline at this rate (whole passages, budget_scale 1)."""
        q = self.question(case.q["qid"])
        state = fresh_state(q, self.counter, float(case.rate))
        punits = make_units(state, "passage", self.counter)
        table = {(u.passage_index, u.start, u.end): case.q["passages"][u.passage_index]["emb"] for u in punits}
        CompressStage(Fixed(table, "passage"), self.counter).run(state)
        text = render(state.passages)
        return has_answer(text, q.answers), self.counter.count(text)

    def prefiltered(self, case: Case) -> tuple[Any, PipelineState]:
        """The question and a fresh state holding only the passages the cached prefilter kept."""
        q = self.question(case.q["qid"])
        state = fresh_state(q, self.counter, float(case.rate))
        kept = set(case.r["kept"])
        for i, p in enumerate(state.passages):
            if i not in kept:
                p.spans = []
        return q, state

    def select(
        self, q: Any, state: PipelineState, table: dict[tuple[int, int, int], float], unit: Granularity
    ) -> tuple[bool, int]:
        CompressStage(Fixed(table, unit), self.counter).run(state)
        text = render(state.passages)
        return has_answer(text, q.answers), self.counter.count(text)

    def run(self, case: Case, scores: list[float]) -> tuple[bool, int]:
        q, state = self.prefiltered(case)
        table = {(u["p"], u["a"], u["b"]): s for u, s in zip(case.r["units"], scores, strict=True)}
        return self.select(q, state, table, "sentence")

    def run_words(self, case: Case, scores: list[float], drop_first: set[str]) -> tuple[bool, int]:
        """Word units, each scored as its sentence; the words in `drop_first` (case-insensitive, stripped of
        punctuation) rank below every other word, so they go before any content does."""
        q, state = self.prefiltered(case)
        units = case.r["units"]
        table = {}
        for w in make_units(state, "word", self.counter):
            s = next((j for j, u in enumerate(units) if u["p"] == w.passage_index and u["a"] <= w.start < u["b"]), None)
            word = re.sub(r"^\W+|\W+$", "", q.passages[w.passage_index].text[w.start : w.end].lower())
            value = -1e9 if s is None else scores[s] - (1e3 if word in drop_first else 0.0)
            table[(w.passage_index, w.start, w.end)] = value
        return self.select(q, state, table, "word")


# Questions whose answer is a number or a date (an answer-type prior for the alternatives below).
NUMBER_QUESTION = re.compile(
    r"^(when|what year|how many|how much|how long|how old|what age|what date|what time|how far|how tall|how big)\b"
    r"|\b(year|date|when|population|enrollment|number of|how many)\b"
)


def zscore(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [0.0] * len(values)
    m = statistics.fmean(values)
    s = statistics.pstdev(values) or 1.0
    return [(v - m) / s for v in values]


def variant_scores(case: Case, spec: dict[str, Any]) -> list[float]:
    """Unit scores of one variant. spec: layout, pool, reduce, norm (none|passage_mean|passage_max),
    log (bool), emb_weight (added: weight * z-scored passage embedding among kept passages),
    emb_mode (z|raw|rank)."""
    if spec.get("debias"):
        vals = debiased_values(case, spec.get("layout", "orig"), spec.get("pool", 5), spec.get("reduce", "mean"))
    else:
        vals = base_values(case, spec.get("layout", "orig"), spec.get("pool", 5), spec.get("reduce", "mean"))
    if not vals:
        return vals
    units = case.r["units"]
    alpha = spec.get("len_alpha", 0.0)
    if alpha:
        lay = case.r["layouts"][spec.get("layout", "orig")]
        lens = [len(v) for v in unit_token_values(torch.zeros(len(lay["offsets"])), lay["offsets"], lay["unit_ranges"])]
        vals = [v * max(n, 1) ** alpha for v, n in zip(vals, lens, strict=True)]
    norm = spec.get("norm", "none")
    if norm != "none":
        by_p: dict[int, list[float]] = {}
        for u, v in zip(units, vals, strict=True):
            by_p.setdefault(u["p"], []).append(v)
        ref = {p: (statistics.fmean(v) if norm == "passage_mean" else max(v)) for p, v in by_p.items()}
        vals = [v / (ref[u["p"]] or 1.0) for u, v in zip(units, vals, strict=True)]
    if spec.get("log", False):
        vals = [math.log(max(v, 1e-9)) for v in vals]
    w = spec.get("emb_weight", 0.0)
    if w:
        kept = case.r["kept"]
        embs = {p: case.q["passages"][p]["emb"] for p in kept}
        mode = spec.get("emb_mode", "raw")
        if mode == "z":
            z = dict(zip(kept, zscore([embs[p] for p in kept]), strict=True))
        elif mode == "rank":
            order = sorted(kept, key=lambda p: -embs[p])
            z = {p: -float(r) for r, p in enumerate(order)}
        else:
            z = embs
        if spec.get("unit_z", True):
            vals = zscore(vals) if not spec.get("log", False) else vals
        vals = [v + w * z[u["p"]] for u, v in zip(units, vals, strict=True)]
    return vals


def diagnose(cases: list[Case]) -> None:
    print("\n== diagnostics (pipeline order, pool 5, mean: the current EHPC) ==")
    for rate in sorted({c.rate for c in cases}, key=float, reverse=True):
        cs = [c for c in cases if c.rate == rate]
        gold_in = [c for c in cs if c.q["gold_index"] in c.r["kept"]]
        ans_unit = [c for c in gold_in if any(u["ans"] for u in c.r["units"])]
        print(
            f"rate {rate}: n={len(cs)} budget median {statistics.median([c.r['limit'] for c in cs])} tokens; "
            f"gold passage in prefilter {len(gold_in)}/{len(cs)}; an answer-bearing unit exists {len(ans_unit)}"
        )
        ranks = [c.q["passages"][c.q["gold_index"]]["rank"] for c in cs]
        print(
            f"  gold embedding rank histogram (0 = best): {[ranks.count(i) for i in range(6)]} >=6: {sum(r >= 6 for r in ranks)}"  # noqa: E501
        )
        print(
            f"  passages kept by the prefilter: median {statistics.median([len(c.r['kept']) for c in cs])}, "
            f"units median {statistics.median([len(c.r['units']) for c in cs])}"
        )
        # rank of the best answer unit among units under the current scores, and where the gold passage sits
        unit_rank, pos_hist, share, ans_cost = [], [], [], []
        for c in ans_unit:
            sc = c.r["layouts"]["orig"]["scores"]
            order = sorted(range(len(sc)), key=lambda i: -sc[i])
            best = min(order.index(i) for i, u in enumerate(c.r["units"]) if u["ans"])
            unit_rank.append(best)
            kept = c.r["kept"]
            pos_hist.append(len(kept) - 1 - kept.index(c.q["gold_index"]))  # 0 = nearest the question
            ans_cost.append(min(u["cost"] for u in c.r["units"] if u["ans"]))
            share.append(ans_cost[-1] / c.r["limit"])
        print(
            f"  rank of the answer unit under EHPC (0 = top): median {statistics.median(unit_rank) if unit_rank else '-'}; "  # noqa: E501
            f"top1 {sum(r == 0 for r in unit_rank)}, top3 {sum(r < 3 for r in unit_rank)}, of {len(unit_rank)}"
        )
        print(
            f"  answer-unit cost / budget: median {statistics.median(share) if share else 0:.2f}, >1: {sum(s > 1 for s in share)}"  # noqa: E501
        )


def correlations(cases: list[Case]) -> None:
    """Position bias: mean unit score by the passage's slot counted back from the question, for gold vs
    non-gold passages; and AUC of unit scores (answer units vs others) per variant."""
    print("\n== position bias: mean EHPC unit score (orig layout) by slot from the question (0 = last) ==")
    for rate in ("0.1",):
        slots: dict[int, list[float]] = {}
        gslots: dict[int, list[float]] = {}
        for c in cases:
            if c.rate != rate or not c.r["units"]:
                continue
            kept = c.r["kept"]
            sc = c.r["layouts"]["orig"]["scores"]
            for u, s in zip(c.r["units"], sc, strict=True):
                slot = len(kept) - 1 - kept.index(u["p"])
                (gslots if u["p"] == c.q["gold_index"] else slots).setdefault(slot, []).append(s)
        for slot in sorted(set(slots) | set(gslots)):
            a = slots.get(slot, [])
            g = gslots.get(slot, [])
            print(
                f"  slot {slot}: non-gold {statistics.fmean(a) if a else float('nan'):.4f} (n={len(a)}), "
                f"gold {statistics.fmean(g) if g else float('nan'):.4f} (n={len(g)})"
            )


def auc(cases: list[Case], spec: dict[str, Any], rate: str) -> float:
    """Within-question AUC of answer units vs other units, averaged over questions that have both."""
    vals = []
    for c in cases:
        if c.rate != rate:
            continue
        sc = variant_scores(c, spec)
        pos = [s for s, u in zip(sc, c.r["units"], strict=True) if u["ans"]]
        neg = [s for s, u in zip(sc, c.r["units"], strict=True) if not u["ans"]]
        if pos and neg:
            p = max(pos)
            vals.append(sum((p > n) + 0.5 * (p == n) for n in neg) / len(neg))
    return statistics.fmean(vals) if vals else float("nan")


VARIANTS: dict[str, dict[str, Any]] = {
    "current (orig,pool5,mean)": {},
    "pool1 mean": {"pool": 1},
    "pool3 mean": {"pool": 3},
    "pool9 mean": {"pool": 9},
    "pool5 max": {"reduce": "max"},
    "pool5 sum": {"reduce": "sum"},
    "pool5 top3": {"reduce": "top3"},
    "layout asc (best last)": {"layout": "asc"},
    "layout desc (best first)": {"layout": "desc"},
    "norm passage_mean": {"norm": "passage_mean"},
    "norm passage_max": {"norm": "passage_max"},
}
for w in (0.25, 0.5, 1.0, 2.0):
    VARIANTS[f"z(ehpc)+{w}*z(emb)"] = {"emb_weight": w, "emb_mode": "z"}
    VARIANTS[f"asc z(ehpc)+{w}*z(emb)"] = {"layout": "asc", "emb_weight": w, "emb_mode": "z"}
for w in (5.0, 10.0, 20.0, 40.0):
    VARIANTS[f"log(ehpc)+{w}*cos"] = {"log": True, "emb_weight": w, "emb_mode": "raw"}
    VARIANTS[f"asc log(ehpc)+{w}*cos"] = {"layout": "asc", "log": True, "emb_weight": w, "emb_mode": "raw"}
VARIANTS["debias pool5 mean"] = {"debias": True}
VARIANTS["debias pool5 sum"] = {"debias": True, "reduce": "sum"}
for w in (5.0, 10.0, 20.0):
    VARIANTS[f"debias log+{w}*cos"] = {"debias": True, "log": True, "emb_weight": w, "emb_mode": "raw"}
    VARIANTS[f"log(max)+{w}*cos"] = {"reduce": "max", "log": True, "emb_weight": w, "emb_mode": "raw"}
    VARIANTS[f"log(sum)+{w}*cos"] = {"reduce": "sum", "log": True, "emb_weight": w, "emb_mode": "raw"}
for a in (0.25, 0.5, 0.75):
    VARIANTS[f"log(mean*n^{a})+10.0*cos"] = {"len_alpha": a, "log": True, "emb_weight": 10.0, "emb_mode": "raw"}
VARIANTS["passage rank only (emb, lexicographic)"] = {"emb_weight": 1000.0, "emb_mode": "rank"}


def simulate(args: argparse.Namespace) -> None:
    cases = load_cases(args.cache)
    sim = Simulator()
    # sanity: the recomputed current scores equal what EHPCScorer returned
    worst = 0.0
    for c in cases[:60]:
        a = base_values(c, "orig", 5, "mean")
        b = c.r["layouts"]["orig"]["scores"]
        worst = max([worst, *[abs(x - y) for x, y in zip(a, b, strict=True)]])
    print(f"sanity: max |recomputed - EHPCScorer| = {worst:.2e}")
    diagnose(cases)
    correlations(cases)
    only = set(args.only.split("|")) if args.only else None
    rates = sorted({c.rate for c in cases}, key=float, reverse=True)
    print("\n== variants: answer recall (kept ratio) per rate; AUC of the best answer unit at 0.1 ==")
    print("| variant | " + " | ".join(f"rate {r}" for r in rates) + " | AUC@0.1 |")
    results: dict[str, Any] = {}
    cells = []
    for rate in rates:
        cs = [c for c in cases if c.rate == rate]
        runs = [sim.embed_passages(c) for c in cs]
        tin = sum(c.q["tokens_in"] for c in cs)
        cells.append(f"{sum(ok for ok, _ in runs) / len(cs):.3f} ({sum(t for _, t in runs) / tin:.3f})")
        results.setdefault("embed-passages", {})[rate] = {"per_q": [ok for ok, _ in runs]}
    print("| embed-passages (reference) | " + " | ".join(cells) + " | - |")
    cells = [
        f"{sum(c.q['gold_index'] in c.r['kept'] for c in cases if c.rate == r) / sum(c.rate == r for c in cases):.3f}"
        for r in rates
    ]
    print("| ceiling: gold passage in prefilter | " + " | ".join(cells) + " | - |")
    for name, spec in VARIANTS.items():
        if only and name not in only:
            continue
        cells = []
        results[name] = {}
        for rate in rates:
            cs = [c for c in cases if c.rate == rate]
            hits, tin, tout = 0, 0, 0
            per_q = []
            for c in cs:
                ok, tok = sim.run(c, variant_scores(c, spec))
                hits += ok
                per_q.append(ok)
                tin += c.q["tokens_in"]
                tout += tok
            results[name][rate] = {"recall": hits / len(cs), "kept": tout / tin, "per_q": per_q}
            cells.append(f"{hits / len(cs):.3f} ({tout / tin:.3f})")
        print(f"| {name} | " + " | ".join(cells) + f" | {auc(cases, spec, '0.1'):.3f} |", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(results))


def _knapsack(values: list[float], costs: list[int], cap: int) -> set[int]:
    """0/1 knapsack on integer costs: the units holding the most value within `cap`."""
    best = [0.0] * (cap + 1)
    take = [[False] * (cap + 1) for _ in values]
    for i, (v, w) in enumerate(zip(values, costs, strict=True)):
        for c in range(cap, w - 1, -1):
            if best[c - w] + v > best[c]:
                best[c] = best[c - w] + v
                take[i][c] = True
    chosen, c = set(), cap
    for i in range(len(values) - 1, -1, -1):
        if take[i][c]:
            chosen.add(i)
            c -= costs[i]
    return chosen


def alternatives(args: argparse.Namespace) -> None:
    """Within-budget alternatives to the shipped scoring (log(sum) + 10 x cosine), at rates 0.1 / 0.05:
    where the best passage must be trimmed, what else could pick the sentences to keep?"""
    cases = [c for c in load_cases(args.cache) if c.rate in ("0.1", "0.05")]
    sim = Simulator()
    embedder = sim.eng.models.embedder()
    header = 14  # tokens of a passage header, about
    shipped = {"reduce": "sum", "log": True, "emb_weight": 10.0, "emb_mode": "raw"}
    hits: dict[tuple[str, str], int] = {}
    trimmed = {"0.1": [0, 0, 0], "0.05": [0, 0, 0]}  # best passage trimmed; of those, holding the answer; kept
    for c in cases:
        units = c.r["units"]
        base = variant_scores(c, shipped)
        q = sim.question(c.q["qid"])
        texts = [q.passages[u["p"]].titled(q.passages[u["p"]].text[u["a"] : u["b"]]) for u in units]
        vecs = embedder.encode([q.question, *texts], normalize_embeddings=True, convert_to_numpy=True)
        sentence_cos = [float(x) for x in vecs[1:] @ vecs[0]] if units else []
        position = [sum(1 for v in units[:i] if v["p"] == u["p"]) for i, u in enumerate(units)]
        top = max(c.r["kept"], key=lambda p: c.q["passages"][p]["emb"]) if c.r["kept"] else -1
        top_fits = sum(u["cost"] for u in units if u["p"] == top) + header <= c.r["limit"]
        number_q = bool(NUMBER_QUESTION.search(q.question.lower()))
        digits = [number_q and any(ch.isdigit() for ch in q.passages[u["p"]].text[u["a"] : u["b"]]) for u in units]
        peak = max(base, default=0.0)
        chosen = _knapsack([math.exp(x - peak) for x in base], [u["cost"] + 1 for u in units], c.r["limit"] - header)
        variants = {
            "shipped: log(sum)+10*cos": base,
            "+ 5 x sentence cosine (MiniLM, titled)": [x + 5 * y for x, y in zip(base, sentence_cos, strict=True)],
            "- 0.2 x sentence position in passage": [x - 0.2 * y for x, y in zip(base, position, strict=True)],
            "best passage whole when it fits": [
                x + (1000.0 if top_fits and u["p"] == top else 0.0) for x, u in zip(base, units, strict=True)
            ],
            "knapsack on exp(score)": [x + (1000.0 if i in chosen else 0.0) for i, x in enumerate(base)],
            "+ 1 for digits in a number/date question": [x + float(d) for x, d in zip(base, digits, strict=True)],
            "+ 5 x sentence cosine + 1 for digits (number q.)": [
                x + 5 * y + float(d) for x, y, d in zip(base, sentence_cos, digits, strict=True)
            ],
        }
        for name, scores in variants.items():
            ok, _ = sim.run(c, scores)
            hits[(name, c.rate)] = hits.get((name, c.rate), 0) + ok
        name = "word units, articles dropped before content"
        hits[(name, c.rate)] = hits.get((name, c.rate), 0) + sim.run_words(c, base, {"a", "an", "the"})[0]
        if c.r["kept"] and not top_fits:
            holds = any(u["ans"] for u in units if u["p"] == top)
            alone = [x + (1000.0 if u["p"] == top else -1000.0) for x, u in zip(base, units, strict=True)]
            t = trimmed[c.rate]
            t[0] += 1
            t[1] += holds
            t[2] += holds and sim.run(c, alone)[0]
    n = len(cases) // 2
    print(f"| variant (n={n} per rate) | recall at 0.1 | recall at 0.05 |")
    print("|---|---|---|")
    for name in dict.fromkeys(k for k, _ in hits):
        print(f"| {name} | {hits[(name, '0.1')] / n:.3f} | {hits[(name, '0.05')] / n:.3f} |")
    for rate, (cut, holds, kept) in trimmed.items():
        print(
            f"rate {rate}: the best passage does not fit whole for {cut} of {n}; of the {holds} where it holds the "
            f"answer, trimming it by the shipped scores keeps the answer in {kept}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--n", type=int, default=150)
    c.add_argument("--skip", type=int, default=200)
    c.add_argument("--rates", default="0.25,0.1,0.05")
    c.add_argument("--data", default=None, help="nq20_dev.jsonl.gz (default: ../shared/data)")
    c.add_argument("--out", default="bench-out/ehpc_cache.json")
    c.add_argument("--scale", type=float, default=0.0, help="prefilter budget scale (0 = settings.prefilter_scale)")
    c.add_argument("--orders", default=",".join(ORDERS))
    c.add_argument("--heads-max-layer", type=int, default=None)
    c.add_argument("--answer-cue", default="", help=r"text after the question, e.g. '\nAnswer:'")
    c.add_argument("--cue-window", type=int, default=None, help="attend from only the last N positions")
    s = sub.add_parser("simulate")
    s.add_argument("--cache", default="bench-out/ehpc_cache.json")
    s.add_argument("--only", default="")
    s.add_argument("--save", default="")
    a = sub.add_parser("alternatives")
    a.add_argument("--cache", default="bench-out/ehpc_cache.json")
    args = ap.parse_args()
    if args.cmd == "collect" and args.skip < 100:
        raise SystemExit("tuning rows must not overlap the first 100 (the bench's)")
    {"collect": collect, "simulate": simulate, "alternatives": alternatives}[args.cmd](args)


if __name__ == "__main__":
    main()
