"""Foundation figures: model load (cold = GGUF conversion, warm = converted folder), index build
throughput, and query latency per stage. Run: `.venv/bin/python benchmarks/foundation.py`.

Everything is measured in this one process, on this machine; medians and p90 over the questions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from ragctx.engine import ContextEngine
from ragctx.evaluation.data import find_nq20
from ragctx.evaluation.metrics import median_p90
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.indexes.loaders import read_documents
from ragctx.models import load_embedder, load_lm
from ragctx.settings import load_settings
from ragctx.state import Budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("bench-out/foundation.json"))
    args = ap.parse_args()
    dev = find_nq20()
    if dev is None:
        raise SystemExit("../shared/data/nq20 not found")
    corpus = dev.parent / "corpus.jsonl.gz"
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        load_lm("default", cache, "cpu")
        result["lm_load_cold_s"] = time.perf_counter() - t
        t = time.perf_counter()
        load_lm("default", cache, "cpu")
        result["lm_load_warm_s"] = time.perf_counter() - t
        t = time.perf_counter()
        embedder = load_embedder("default", "cpu")
        result["embedder_load_s"] = time.perf_counter() - t

        passages = list(read_documents([corpus], 120))
        t = time.perf_counter()
        index = FaissIndex.build(Path(tmp) / "index", passages, embedder, embedder_name="default")
        secs = time.perf_counter() - t
        result["index_passages"] = len(passages)
        result["index_build_s"] = secs
        result["index_passages_per_s"] = len(passages) / secs

        settings = load_settings(index_dir=Path(tmp) / "index", cache_dir=cache)
        engine = ContextEngine(settings, retriever=index)
        questions = []
        with gzip.open(dev, "rt") as fh:
            for line, _ in zip(fh, range(args.questions), strict=False):
                questions.append(json.loads(line)["question"])
        engine.run(questions[0], budget=Budget(tokens=args.budget))  # warm-up: tokenizer, FAISS, pySBD
        per_stage: dict[str, list[float]] = {}
        totals = []
        for q in questions:
            t = time.perf_counter()
            ctx = engine.run(q, budget=Budget(tokens=args.budget))
            totals.append((time.perf_counter() - t) * 1000)
            for st in ctx.stats:
                per_stage.setdefault(st.name, []).append(st.ms)
        result["query_ms"] = {name: median_p90(v) for name, v in per_stage.items()}
        result["query_total_ms"] = median_p90(totals)
        result["questions"] = len(questions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
