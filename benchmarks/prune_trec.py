"""`ragctx prune` on TREC-DL 2019: relevant passages kept and nDCG@10 of BM25 after pruning, vs random.

The corpus is the union of the BM25 top-`depth` hits of the 43 queries (deduplicated by docid). It is
scored once (`ragctx prune --keep 0.9`), then re-selected at the other keep rates from the same shard
checkpoints (`--resume --keep ...`, no rescoring). For each keep rate:
- relevant kept: of the (query, passage) pairs in the corpus judged >= 2 (and >= 1), the fraction kept;
- nDCG@10: BM25's order with pruned passages removed, linear gains (trec_eval's ndcg_cut_10), the ideal
  from all of the query's qrels (unjudged = 0); unpruned BM25 is the reference;
- random pruning at the same keep rate (mean of `--seeds` seeds), and the LM score alone (no penalties, no
  de-duplication) selected from the same checkpoints.
`--throughput N` instead times scoring of the first N passages: local engine vs Ray local.
Run: `python benchmarks/prune_trec.py --depth 30 --out bench-out/prune` (wrap timings in flock).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import time
from collections import defaultdict
from pathlib import Path

from ragctx.jobs.prune import PruneConfig, run_prune
from ragctx.jobs.select import PassageScore, select
from ragctx.jobs.shards import ShardStore
from ragctx.models import ModelRegistry
from ragctx.settings import load_settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec_dl"
KEEPS = (0.9, 0.75, 0.5)


def load_runs(depth: int) -> tuple[list[dict], dict[str, dict[str, int]]]:
    with gzip.open(DATA / "dl19_bm25_top100_with_qrels.jsonl.gz", "rt", encoding="utf-8") as fh:
        queries = [json.loads(line) for line in fh]
    for q in queries:
        q["hits"] = sorted(q["hits"], key=lambda h: h["rank"])[:depth]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (DATA / "qrels.dl19-passage.txt").read_text().splitlines():
        qid, _, docid, rel = line.split()
        qrels[qid][docid] = int(rel)
    return queries, qrels


def write_corpus(queries: list[dict], path: Path, limit: int | None = None) -> int:
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as fh:
        for q in queries:
            for hit in q["hits"]:
                if hit["docid"] not in seen and (limit is None or len(seen) < limit):
                    seen.add(hit["docid"])
                    fh.write(json.dumps({"id": hit["docid"], "text": hit["text"]}, ensure_ascii=False) + "\n")
    return len(seen)


def ndcg10(ranking: list[str], judged: dict[str, int]) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def evaluate(kept: set[str] | None, queries: list[dict], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Relevant kept (grade >= 2 and >= 1) and mean nDCG@10 of BM25 with the unkept passages removed."""
    pairs2 = pairs1 = kept2 = kept1 = 0
    ndcgs = []
    for q in queries:
        judged = qrels.get(q["qid"], {})
        ranking = [h["docid"] for h in q["hits"] if kept is None or h["docid"] in kept]
        ndcgs.append(ndcg10(ranking, judged))
        for h in q["hits"]:
            rel = judged.get(h["docid"], 0)
            is_kept = kept is None or h["docid"] in kept
            pairs2 += rel >= 2
            kept2 += rel >= 2 and is_kept
            pairs1 += rel >= 1
            kept1 += rel >= 1 and is_kept
    return {
        "relevant_kept_ge2": kept2 / pairs2,
        "relevant_kept_ge1": kept1 / pairs1,
        "ndcg10": sum(ndcgs) / len(ndcgs),
        "relevant_pairs_ge2": pairs2,
    }


def quality_run(args: argparse.Namespace) -> None:
    queries, qrels = load_runs(args.depth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / f"trec_dl19_top{args.depth}.jsonl"
    n = write_corpus(queries, corpus)
    settings = load_settings()
    registry = ModelRegistry(settings)
    rows = []
    base = evaluate(None, queries, qrels)
    rows.append({"method": "unpruned BM25", "keep": 1.0, **base})
    prune_dir = out / "prune"
    score_info: dict[str, float] = {}
    for i, keep in enumerate(KEEPS):
        cfg = PruneConfig(
            inputs=[str(corpus)],
            out=prune_dir,
            keep=keep,
            shard_size=args.shard_size,
            resume=True,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        result = run_prune(cfg, settings, registry)
        if i == 0:
            score_info = {"passages_scored": result.passages_scored, "scoring_seconds": result.scoring_seconds}
        kept = {json.loads(line)["id"] for line in (prune_dir / "corpus.jsonl").read_text().splitlines()}
        rows.append({"method": "ragctx prune", "keep": keep, "kept": len(kept), **evaluate(kept, queries, qrels)})
        (out / f"report_keep{keep}.md").write_text((prune_dir / "report.md").read_text())
    # The LM score alone, from the same checkpoints: what the penalties and de-duplication add.
    store = ShardStore(prune_dir)
    scored = list(store.read_all(math.ceil(n / args.shard_size)))
    lm_only = [PassageScore(id=r.passage.id, lm=r.lm, quality=r.lm, signals=r.signals) for r in scored]
    for keep in KEEPS:
        chosen = select(lm_only, [], keep=keep)
        kept = {s.id for s, k in zip(lm_only, chosen.kept, strict=True) if k}
        rows.append(
            {"method": "LM log P(true) only", "keep": keep, "kept": len(kept), **evaluate(kept, queries, qrels)}
        )
    ids = [r.passage.id for r in scored]
    for keep in KEEPS:
        runs = []
        for seed in range(args.seeds):
            kept = set(random.Random(seed).sample(ids, math.floor(keep * len(ids) + 0.5)))
            runs.append(evaluate(kept, queries, qrels))
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        rows.append({"method": f"random (mean of {args.seeds} seeds)", "keep": keep, "kept": len(kept), **mean})
    result_json = {"depth": args.depth, "passages": n, "queries": len(queries), **score_info, "rows": rows}
    (out / "prune_trec.json").write_text(json.dumps(result_json, indent=2) + "\n")
    print(markdown(result_json))


def markdown(result: dict) -> str:
    lines = [
        f"TREC-DL 2019, {result['queries']} queries, corpus = BM25 top-{result['depth']} "
        f"({result['passages']} passages)",
        "",
        "| method | keep | relevant kept (>=2) | relevant kept (>=1) | nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['keep']:g} | {r['relevant_kept_ge2']:.3f} | {r['relevant_kept_ge1']:.3f} "
            f"| {r['ndcg10']:.4f} |"
        )
    return "\n".join(lines)


def throughput_run(args: argparse.Namespace) -> None:
    queries, _ = load_runs(100)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / f"trec_first{args.throughput}.jsonl"
    n = write_corpus(queries, corpus, limit=args.throughput)
    settings = load_settings()
    # Interleaved repeats: on a shared machine the load changes between runs, so each engine sees the same.
    runs = [("local", 1, 2), ("ray", 2, 1), ("ray", 1, 2)] * args.repeats
    results = []
    for engine, workers, threads in runs:
        started = time.perf_counter()
        result = run_prune(
            PruneConfig(
                inputs=[str(corpus)],
                out=out / f"{engine}-{workers}x{threads}",
                shard_size=args.shard_size,
                overwrite=True,
                engine="ray" if engine == "ray" else "local",
                workers=workers,
                threads=threads,
                batch_size=args.batch_size,
                dedup=True,
                progress=not args.quiet,
            ),
            settings,
        )
        wall = time.perf_counter() - started
        results.append(
            {
                "engine": engine,
                "workers": workers,
                "threads_per_worker": threads,
                "passages": n,
                "scoring_seconds": round(result.scoring_seconds, 1),
                "passages_per_second": round(n / result.scoring_seconds, 2),
                "wall_seconds": round(wall, 1),
            }
        )
        results[-1]["load_average"] = os.getloadavg()[0]
        print(json.dumps(results[-1]), flush=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=30, help="BM25 hits per query in the corpus (max 100).")
    ap.add_argument("--out", default="bench-out/prune")
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--throughput", type=int, default=None, help="Time the engines on the first N passages.")
    ap.add_argument("--repeats", type=int, default=2, help="Rounds of the throughput runs.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found (the shared data beside the checkout)")
    if args.throughput:
        throughput_run(args)
    else:
        quality_run(args)


if __name__ == "__main__":
    main()
