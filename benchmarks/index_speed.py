"""Indexing throughput: `FaissIndex.build` against the encoder alone, in one run, on one machine.

For the 300 bundled sample passages and the 2,600 of `../shared/data/nq20/corpus.jsonl.gz` it times
(models loaded once, before any timing):
- `SentenceTransformer.encode` of the passages' embedding texts (batch 64, the library's length sorting);
- `FaissIndex.build` of the same passages (encode + FAISS + SQLite + manifest, write-then-swap);
and, for each embedder backend (`torch`, `int8`), the same encode and the top-10 recall of the gold
passage of the first `--questions` NQ-20 dev questions over the 2,600-passage corpus.

  python benchmarks/index_speed.py --out benchmarks/results/index_speed.json --plot docs/index-speed.png
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.indexes.faiss_index import FaissIndex, embedding_text
from ragctx.io import atomic_write, save_figure
from ragctx.models import load_embedder
from ragctx.sample import load_sample
from ragctx.settings import load_settings
from ragctx.types import Passage


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/index_speed.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    nq = find_nq20()
    assert nq is not None, "../shared/data/nq20 not found"
    with gzip.open(nq.parent / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        corpus = [Passage(str(r["id"]), r["text"], r.get("title") or "") for r in map(json.loads, fh)]
    _, rows = load_sample()
    sample = [Passage(str(r["id"]), str(r["text"]), str(r.get("title") or "")) for r in rows.values()]
    sets = {f"sample-{len(sample)}": sample, f"nq20-corpus-{len(corpus)}": corpus}
    settings = load_settings()
    records: dict[str, dict[str, float]] = {}
    embedders = {b: load_embedder(settings.embedder, "cpu", backend=b) for b in ("torch", "int8", "bfloat16")}
    for name, passages in sets.items():
        texts = [embedding_text(p) for p in passages]
        rec: dict[str, float] = {"passages": len(passages)}
        for backend, emb in embedders.items():
            emb.encode(texts[:64], batch_size=64)  # warm-up
            s = timed(
                lambda emb=emb, texts=texts: emb.encode(texts, batch_size=64, normalize_embeddings=True), args.repeats
            )
            rec[f"encode_{backend}_passages_per_s"] = len(texts) / s
            with tempfile.TemporaryDirectory() as tmp:
                s = timed(
                    lambda emb=emb, tmp=tmp, ps=passages: FaissIndex.build(
                        Path(tmp) / "ix", ps, emb, settings.embedder
                    ),
                    args.repeats,
                )
            rec[f"build_{backend}_passages_per_s"] = len(texts) / s
            rec[f"build_over_encode_{backend}"] = (
                rec[f"build_{backend}_passages_per_s"] / rec[f"encode_{backend}_passages_per_s"]
            )
        for fast in ("int8", "bfloat16"):
            rec[f"{fast}_over_torch_encode"] = rec[f"encode_{fast}_passages_per_s"] / rec["encode_torch_passages_per_s"]
        records[name] = rec
        print(name, json.dumps(rec, indent=1))
    # Retrieval quality per backend: is the gold passage in the top 10 of the whole corpus?
    questions = load_nq20(nq, args.questions)
    recall = {}
    for backend, emb in embedders.items():
        vecs = emb.encode([embedding_text(p) for p in corpus], batch_size=64, normalize_embeddings=True)
        ids = [p.id for p in corpus]
        qv = emb.encode([q.question for q in questions], batch_size=64, normalize_embeddings=True)
        top = np.argsort(-(qv @ vecs.T), axis=1)[:, :10]
        gold = [q.passages[q.gold_index].id for q in questions]
        recall[backend] = float(np.mean([g in {ids[j] for j in row} for g, row in zip(gold, top, strict=True)]))
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "repeats": args.repeats,
        "sets": records,
        "top10_gold_recall": recall,
        "questions": len(questions),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result["top10_gold_recall"]))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.4))
        keys = [f"{step}_{b}" for b in embedders for step in ("encode", "build")]
        labels = [k.replace("_", " ") for k in keys]
        width = 0.38
        for k, (name, rec) in enumerate(records.items()):
            xs = np.arange(len(keys)) + (k - 0.5) * width
            ax.bar(xs, [rec[f"{key}_passages_per_s"] for key in keys], width, label=name)
        ax.set_xticks(np.arange(len(keys)), labels)
        ax.set_ylabel("passages / s")
        ax.set_title(f"indexing vs encoder alone ({result['machine']})")
        ax.legend(fontsize=8)
        save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
