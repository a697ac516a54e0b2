"""Load test of the REST service: POST /v1/compress on loopback at concurrency 1, 8 and 32.

Starts `ragctx serve` in its own process (so client and server do not share a GIL) unless --url is given,
sends NQ-20 questions with their 20 passages and a token budget, and prints, per concurrency level,
throughput and p50/p99 latency of the successful requests, and how many were refused (429) or failed.
Each level is bounded by a request count and a time limit, whichever comes first.

Run: `.venv/bin/python benchmarks/api_load.py` (options: --requests, --seconds, --concurrency, --url).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ragctx.bench.data import find_nq20


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def row(self) -> str:
        ok = len(self.latencies_ms)
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if ok else (float("nan"), float("nan"))
        sent = sum(self.statuses.values())
        refused = self.statuses.get(429, 0)
        failed = sent - ok - refused
        return (
            f"| {self.concurrency} | {sent} | {ok} | {refused} | {failed} | {ok / self.seconds:.1f} "
            f"| {p50:.0f} | {p99:.0f} |"
        )


def payloads(path: Path, n: int, budget: int) -> list[dict[str, Any]]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            passages = [{"id": p["id"], "title": p["title"], "text": p["text"]} for p in row["passages"]]
            out.append({"question": row["question"], "passages": passages, "budget": budget})
            if len(out) == n:
                break
    return out


async def run_level(
    url: str, bodies: list[dict[str, Any]], concurrency: int, max_requests: int, max_seconds: float
) -> LevelResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_index = 0
    started = time.perf_counter()
    result = LevelResult(concurrency, 0.0)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < max_requests and time.perf_counter() - started < max_seconds:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/compress", json=body)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                result.statuses[status] += 1
                if status == 200:
                    result.latencies_ms.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    server_concurrency: int,
) -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="ragctx-load-")
    port = free_port()
    env = {
        **os.environ,
        "RAGCTX_INDEX_DIR": str(Path(tmp.name) / "index"),
        "RAGCTX_MAX_CONCURRENCY": str(server_concurrency),
    }
    log = open(Path(tmp.name) / "server.log", "wb")  # noqa: SIM115 (lives as long as the server)
    cmd = [sys.executable, "-m", "ragctx.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited; its log is {log.name}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, tmp
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not become ready in 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="An already running service (default: start one).")
    ap.add_argument("--concurrency", default="1,8,32", help="Comma-separated client concurrency levels.")
    ap.add_argument("--requests", type=int, default=300, help="At most this many requests per level.")
    ap.add_argument("--seconds", type=float, default=30.0, help="At most this long per level.")
    ap.add_argument("--budget", type=int, default=300, help="Token budget of each context.")
    ap.add_argument("--server-concurrency", type=int, default=64, help="RAGCTX_MAX_CONCURRENCY of the server.")
    ap.add_argument("--data", type=Path, default=None, help="nq20_dev.jsonl.gz (default: ../shared/data).")
    args = ap.parse_args()

    data = args.data or find_nq20()
    if data is None or not data.is_file():
        raise SystemExit("NQ-20 dev data not found; pass --data PATH/nq20_dev.jsonl.gz")
    bodies = payloads(data, 50, args.budget)
    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        proc, url, _tmp = start_server(args.server_concurrency)
    try:
        asyncio.run(run_level(url, bodies, 1, 5, 60))  # warm-up: first-request costs are not load
        print(f"POST /v1/compress, 20 NQ passages per request, budget {args.budget} tokens, {url}")
        print("| concurrency | sent | ok | 429 | failed | ok/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|")
        for level in (int(c) for c in args.concurrency.split(",") if c.strip()):
            result = asyncio.run(run_level(url, bodies, level, args.requests, args.seconds))
            print(result.row(), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
