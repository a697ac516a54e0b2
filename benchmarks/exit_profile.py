"""Where the CPU time of one EXIT request goes (issue 7: can micro-batching double throughput on CPU?).

Runs `/v1/compress`'s pipeline in process (method exit, 5 NQ-20 passages, budget 150 tokens, as
`benchmarks/api_load.py --method exit --passages 5 --budget 150`) under the PyTorch profiler and prints
the share of matrix multiplication and its FLOP rate, next to the rate of a large fp32 GEMM and of a GEMM
of the request's own shape on the same threads. If one request's GEMMs already run near the machine's
GEMM rate, merging requests can only remove the rest.

Run: `.venv/bin/python benchmarks/exit_profile.py` (`--requests N`, `--threads T`).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ragctx.engine import ContextEngine
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.state import Budget


def gemm_rate(m: int, k: int, n: int, reps: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nq = find_nq20()
    if nq is None:
        raise SystemExit("NQ-20 not found (../shared/data)")
    questions = load_nq20(nq, args.requests + 1)
    engine = ContextEngine()

    def request(i: int) -> None:
        q = questions[i]
        engine.run(q.question, q.passages[:5], method="exit", budget=Budget(tokens=150))

    request(0)  # warm-up: models load, caches fill
    t0 = time.perf_counter()
    for i in range(1, args.requests + 1):
        request(i)
    wall = (time.perf_counter() - t0) / args.requests
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for i in range(1, args.requests + 1):
            request(i)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = [e for e in events if e.key == "aten::mm"]
    mm_us = sum(e.self_cpu_time_total for e in mm)
    mm_flops = sum(e.flops for e in mm)
    print(f"wall per request (unprofiled): {wall:.2f} s on {args.threads} threads")
    print(
        f"matrix multiplication: {mm_us / total:.0%} of profiled CPU time, "
        f"{mm_flops / 1e9 / args.requests:.0f} GFLOP per request at {mm_flops / mm_us / 1e3:.0f} GFLOP/s"
    )
    print(
        f"fp32 GEMM 2048x2048x2048: {gemm_rate(2048, 2048, 2048, 10):.0f} GFLOP/s; "
        f"180x576x1536 (one passage's rows through an MLP projection): {gemm_rate(180, 576, 1536, 200):.0f} GFLOP/s; "
        f"32 times the rows: {gemm_rate(5760, 576, 1536, 20):.0f} GFLOP/s"
    )
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]:
        print(f"  {e.key:50s} {e.self_cpu_time_total / 1e6 / args.requests:.3f} s per request")


if __name__ == "__main__":
    main()
