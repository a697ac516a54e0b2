"""Load test of the REST service: POST /v1/compress on loopback at concurrency 1, 8 and 32.

Starts `ragctx serve` in its own process (so client and server do not share a GIL) unless --url is given,
sends NQ-20 questions with their 20 passages and a token budget, and prints, per concurrency level,
throughput and p50/p99 latency of the successful requests, and how many were refused (429) or failed.
Each level is bounded by a request count and a time limit, whichever comes first.

With `--lm-batching both` (the default when the server is started here) the levels run twice, against a
server with the scorer-LM micro-batcher off and one with it on (`RAGCTX_LM_BATCHING`), and a last table
gives the ratios. The default stages use no LM; `--method exit` (EXIT: one P(Yes) per sentence from the
scorer LM) makes scorer-LM calls dominate each request.

Run: `.venv/bin/python benchmarks/api_load.py` (options: --requests, --seconds, --concurrency, --url,
--method, --passages, --lm-batching).
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

from ragctx.evaluation.data import find_nq20


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else float("nan")

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


def payloads(path: Path, n: int, budget: int, n_passages: int = 20, method: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            passages = [{"id": p["id"], "title": p["title"], "text": p["text"]} for p in row["passages"][:n_passages]]
            body: dict[str, Any] = {"question": row["question"], "passages": passages, "budget": budget}
            if method:
                body["method"] = method
            out.append(body)
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

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

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
    server_concurrency: int, lm_batching: bool | None = None
) -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="ragctx-load-")
    port = free_port()
    env = {
        **os.environ,
        "RAGCTX_INDEX_DIR": str(Path(tmp.name) / "index"),
        "RAGCTX_MAX_CONCURRENCY": str(server_concurrency),
        # Queueing at concurrency 32 is what is measured: the service's time limit must not cut it short.
        "RAGCTX_REQUEST_TIMEOUT_S": "600",
    }
    if lm_batching is not None:
        env["RAGCTX_LM_BATCHING"] = "true" if lm_batching else "false"
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


def run_levels(
    url: str, bodies: list[dict[str, Any]], levels: list[int], args: argparse.Namespace
) -> list[LevelResult]:
    asyncio.run(run_level(url, bodies, 1, 3, 120))  # warm-up: first-request costs (model loads) are not load
    print("| concurrency | sent | ok | 429 | failed | ok/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for level in levels:
        result = asyncio.run(run_level(url, bodies, level, args.requests, args.seconds))
        print(result.row(), flush=True)
        results.append(result)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="An already running service (default: start one).")
    ap.add_argument("--concurrency", default="1,8,32", help="Comma-separated client concurrency levels.")
    ap.add_argument("--requests", type=int, default=300, help="At most this many requests per level.")
    ap.add_argument("--seconds", type=float, default=30.0, help="At most this long per level.")
    ap.add_argument("--budget", type=int, default=300, help="Token budget of each context.")
    ap.add_argument("--passages", type=int, default=20, help="Passages per request (the first of NQ-20's 20).")
    ap.add_argument("--method", default=None, help="Compression method of the requests (default: the server's).")
    ap.add_argument(
        "--lm-batching",
        choices=["both", "on", "off", "server"],
        default="both",
        help="Scorer-LM micro-batching of the started server: off then on (both), one of them, or as configured.",
    )
    ap.add_argument("--server-concurrency", type=int, default=64, help="RAGCTX_MAX_CONCURRENCY of the server.")
    ap.add_argument("--data", type=Path, default=None, help="nq20_dev.jsonl.gz (default: ../shared/data).")
    args = ap.parse_args()

    data = args.data or find_nq20()
    if data is None or not data.is_file():
        raise SystemExit("NQ-20 dev data not found; pass --data PATH/nq20_dev.jsonl.gz")
    bodies = payloads(data, 50, args.budget, args.passages, args.method)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    method = args.method or "the server's default"
    what = f"POST /v1/compress, {args.passages} NQ passages per request, method {method}, budget {args.budget} tokens"
    if args.url:
        print(f"{what}, {args.url}")
        run_levels(args.url.rstrip("/"), bodies, levels, args)
        return
    modes = {"both": [False, True], "on": [True], "off": [False], "server": [None]}[args.lm_batching]
    by_mode: dict[bool | None, list[LevelResult]] = {}
    for mode in modes:
        proc, url, _tmp = start_server(args.server_concurrency, mode)
        try:
            label = {None: "as configured", True: "on", False: "off"}[mode]
            print(f"\n{what}, scorer-LM batching {label}, {url}")
            by_mode[mode] = run_levels(url, bodies, levels, args)
        finally:
            proc.terminate()
            proc.wait(30)
    if False in by_mode and True in by_mode:
        print("\nbatching on / off")
        print("| concurrency | ok/s off | ok/s on | throughput ratio | p50 ms off | p50 ms on |")
        print("|---|---|---|---|---|---|")
        for off, on in zip(by_mode[False], by_mode[True], strict=True):
            ratio = on.throughput / off.throughput if off.throughput else float("nan")
            print(
                f"| {off.concurrency} | {off.throughput:.2f} | {on.throughput:.2f} | {ratio:.2f}x "
                f"| {off.p50:.0f} | {on.p50:.0f} |"
            )


if __name__ == "__main__":
    main()
