"""Load on a real service: latency p50/p99, failures and the process's RSS at concurrency 1, 8 and 32 for
/v1/context, /v1/compress and /v1/rerank (default chain, default rate, NQ-20 dev questions).

  python benchmarks/load.py --out benchmarks/results/load.json --plot docs/load.png

The service runs in this process on loopback (uvicorn in a thread), over an index of the bundled sample
corpus, with `max_concurrency` = the highest concurrency so nothing is refused for being busy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ragctx.api import create_app
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.io import atomic_write, save_figure
from ragctx.models import ModelRegistry
from ragctx.sample import load_sample
from ragctx.settings import load_settings
from ragctx.types import Passage


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _serve(app: Any) -> tuple[str, uvicorn.Server]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64, help="requests per route and concurrency")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/load.png"))
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    questions = load_nq20(find_nq20(), args.requests)
    work = Path(tempfile.mkdtemp())
    settings = load_settings(index_dir=work / "index", max_concurrency=max(levels), request_timeout_s=600)
    models = ModelRegistry(settings)
    _, rows = load_sample()
    sample = [Passage(str(r["id"]), str(r["text"]), str(r.get("title") or "")) for r in rows.values()]
    FaissIndex.build(settings.resolved_index_dir(), sample, models.embedder(), "default").close()
    url, server = _serve(create_app(settings, models))
    bodies = {
        "/v1/context": [{"question": q.question} for q in questions],
        "/v1/compress": [
            {"question": q.question, "passages": [{"id": p.id, "title": p.title, "text": p.text} for p in q.passages]}
            for q in questions
        ],
        "/v1/rerank": [{"query": q.question, "documents": [p.text for p in q.passages], "top_n": 5} for q in questions],
    }
    records = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for route, items in bodies.items():
            http.post(route, json=items[0])  # warm
            for c in levels:

                def one(body: dict[str, Any]) -> tuple[int, float]:
                    t0 = time.perf_counter()
                    r = http.post(route, json=body)  # noqa: B023
                    return r.status_code, (time.perf_counter() - t0) * 1000

                started = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    results = list(pool.map(one, items))
                wall = time.perf_counter() - started
                ms = sorted(m for _, m in results)
                rec = {
                    "route": route,
                    "concurrency": c,
                    "requests": len(results),
                    "failed": sum(code != 200 for code, _ in results),
                    "p50_ms": round(statistics.median(ms), 1),
                    "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
                    "requests_per_s": round(len(results) / wall, 2),
                    "rss_mb": round(_rss_mb(), 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                }
                records.append(rec)
                print(json.dumps(rec), flush=True)
    server.should_exit = True
    meta = {"machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}", "device": "cpu"}
    with atomic_write(args.out) as fh:
        json.dump({"meta": meta, "records": records}, fh, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for route in bodies:
        rows = [r for r in records if r["route"] == route]
        axes[0].plot([r["concurrency"] for r in rows], [r["p99_ms"] for r in rows], marker="o", label=route)
        axes[1].plot([r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=route)
    for ax, what in zip(axes, ("p99 latency (ms)", "requests per second"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(what)
        ax.legend()
    fig.suptitle(f"ragctx serve under load ({meta['machine']})")
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
