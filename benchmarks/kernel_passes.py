"""The floor of the head-scoring kernel's two-pass design: each pass alone, with no synchronisation.

ragctx's kernel (ragctx/kernels/triton_mass.py) runs pass 1 (per-row softmax statistics) and pass 2
(per-key mass) in one launch, with counters between them. This script times two stripped-down kernels,
one per pass, with none of that: no counters, no folds, no causal edge, no weights (pass 2 gets the
exact row statistics from PyTorch). Their sum is what the design could reach if synchronisation were
free, and the sweep shows which tiles and how many programs per multiprocessor suit each pass.
`--tma` adds variants that load K through TMA tensor descriptors, with and without Triton's warp
specialisation of the loop.

Shapes as in kernel_bench.py: W = 32, 8 query heads over 2 key heads (128 rows per key head), bf16.
Times: GPU time per call from CUDA-graph replay of 20 calls (K stays in L2 between calls where it fits,
as it does between the two passes of one call). Run on a CUDA machine:
`python benchmarks/kernel_passes.py --out-dir bench-out [--tma]`; writes kernel_passes.json.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from kernel_bench import graph_ms  # a sibling script: run as python benchmarks/kernel_passes.py

LOG2E = 1.4426950408889634


@triton.jit
def _pass1(Q, K, PM, PL, N, RANGE, c, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
           TMA: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    """Per-row running max and normaliser over one key range of one key head (online softmax)."""
    sid = tl.program_id(0)
    kvh = tl.program_id(1)
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + (kvh * BM + rows)[:, None] * D + offs_d[None, :])
    start = sid * RANGE
    if TMA:
        desc = tl.make_tensor_descriptor(K + kvh * N * D, shape=[N, D], strides=[D, 1], block_shape=[BN, D])
    m = tl.full([BM], float("-inf"), tl.float32)
    norm = tl.zeros([BM], tl.float32)
    for i in tl.range(0, RANGE // BN, warp_specialize=WS):
        if TMA:
            k = desc.load([start + i * BN, 0])
        else:
            offs_n = start + i * BN + tl.arange(0, BN)
            k = tl.load(K + kvh * N * D + offs_n[:, None] * D + offs_d[None, :])
        s = tl.dot(q, tl.trans(k)) * c
        m_new = tl.maximum(m, tl.max(s, 1))
        norm = norm * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m = m_new
    out = (kvh * tl.num_programs(0) + sid) * BM + rows
    tl.store(PM + out, m)
    tl.store(PL + out, norm)


@triton.jit
def _pass2(Q, K, BIAS, OUT, N, RANGE, c, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
           TMA: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    """Each key's probability summed over the key head's rows, added into the output."""
    rid = tl.program_id(0)
    kvh = tl.program_id(1)
    start = rid * RANGE
    offs_d = tl.arange(0, D)
    rows = tl.arange(0, BM)
    qt = tl.trans(tl.load(Q + (kvh * BM + rows)[:, None] * D + offs_d[None, :]))
    bias = tl.load(BIAS + kvh * BM + rows)
    if TMA:
        desc = tl.make_tensor_descriptor(K + kvh * N * D, shape=[N, D], strides=[D, 1], block_shape=[BN, D])
    for i in tl.range(0, RANGE // BN, warp_specialize=WS):
        offs_n = start + i * BN + tl.arange(0, BN)
        if TMA:  # noqa: SIM108 (a compile-time branch: `desc` exists only when TMA)
            k = desc.load([start + i * BN, 0])
        else:
            k = tl.load(K + kvh * N * D + offs_n[:, None] * D + offs_d[None, :])
        p = tl.sum(tl.exp2(tl.dot(k, qt) * c - bias[None, :]), 1)
        tl.atomic_add(OUT + offs_n, p, sem="relaxed")


def graph_us(fn: Callable[[], Any]) -> float:
    return graph_ms(fn, calls=20, reps=30) * 1000


def sweep_shape(d: int, n: int, sms: int, tma: bool) -> list[dict[str, Any]]:
    q = torch.randn(8, 32, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, n, d, device="cuda", dtype=torch.bfloat16)
    c = LOG2E / math.sqrt(d)
    scores = torch.einsum("hgwd,hnd->hgwn", q.float().view(2, 4, 32, d), k.float()).reshape(2, 128, n) / math.sqrt(d)
    bias = (torch.logsumexp(scores, -1) * LOG2E).reshape(-1).contiguous()
    ref = torch.softmax(scores, -1).sum(dim=(0, 1))
    del scores
    rows = []
    loads = [(False, False)] + ([(True, False), (True, True)] if tma else [])
    for per_sm, bn, warps, stages, (use_tma, ws) in itertools.product((1, 2, 4), (64, 128), (4, 8), (2, 3), loads):
        if use_tma and per_sm != 2:
            continue
        splits = max(1, per_sm * sms // 2)  # programs per key head
        span = triton.cdiv(triton.cdiv(n, splits), bn) * bn
        splits = triton.cdiv(n, span)
        if splits * span != n:
            continue
        pm = torch.empty(2 * splits * 128, device="cuda")
        pl = torch.empty_like(pm)
        out = torch.zeros(n, device="cuda")
        meta = dict(BM=128, BN=bn, D=d, TMA=use_tma, WS=ws, num_warps=warps, num_stages=stages)
        grid = (splits, 2)

        def pass1() -> None:
            _pass1[grid](q, k, pm, pl, n, span, c, **meta)  # noqa: B023

        def pass2() -> None:
            out.zero_()  # noqa: B023
            _pass2[grid](q, k, bias, out, n, span, c, **meta)  # noqa: B023

        base = {"d": d, "N": n, "programs": 2 * splits, "BN": bn, "warps": warps, "stages": stages}
        base |= {"tma": use_tma, "warp_specialize": ws}
        for name, fn in (("pass1", pass1), ("pass2", pass2)):
            try:
                us = graph_us(fn)
            except Exception as exc:  # a tile that does not fit, or a compiler failure
                print("failed:", name, base, type(exc).__name__, str(exc)[:120], flush=True)
                continue
            if name == "pass1":
                m = pm.view(2, splits, 128)
                top = m.max(1).values
                lse = top + torch.log2((pl.view(2, splits, 128) * torch.exp2(m - top[:, None])).sum(1))
                err = float((lse - bias.view(2, 128)).abs().max())
            else:
                err = float(((out - ref).abs() / ref).max())
            row = {"pass": name, **base, "us": round(us, 2), "err": err}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="bench-out")
    ap.add_argument("--ns", type=int, nargs="+", default=[16384, 65536, 131072])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--tma", action="store_true", help="also TMA loads, with and without warp specialisation")
    args = ap.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    props = torch.cuda.get_device_properties(0)
    rows = []
    for d, n in itertools.product(args.dims, args.ns):
        rows += sweep_shape(d, n, props.multi_processor_count, args.tma)
        torch.cuda.empty_cache()
    best: dict[str, Any] = collections.defaultdict(dict)
    for d, n in itertools.product(args.dims, args.ns):
        nbytes = (8 * 32 * d + 2 * n * d) * 2
        for name in ("pass1", "pass2"):
            mine = [r for r in rows if r["pass"] == name and r["d"] == d and r["N"] == n]
            if mine:
                best[f"d{d}-N{n}"][name] = min(mine, key=lambda r: r["us"])
        both = sum(r["us"] for r in best[f"d{d}-N{n}"].values())
        best[f"d{d}-N{n}"]["sum_us"] = both
        best[f"d{d}-N{n}"]["sum_GBps"] = nbytes / both / 1e3
        print(f"d {d} N {n}: best pass 1 + best pass 2 = {both:.1f} us ({nbytes / both / 1e3:.0f} GB/s of Q+K)")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "kernel_passes.json"), "w") as fh:
        meta = {"device": torch.cuda.get_device_name(), "triton": triton.__version__}
        json.dump({**meta, "best": best, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
