"""Head-scoring pass on the GPU: Triton kernel vs the PyTorch path vs the naive ways.

For N = 4k, 16k, 64k, 128k keys, W = 32 query rows, 8 query heads over 2 key heads (GQA group 4),
head_dim 64 and 128, bf16: milliseconds (median of 20 CUDA-event-timed runs after warm-up) and effective
bandwidth (bytes of Q and K read / time) against a device-to-device copy measured in the same run.
Rows: `triton` (this kernel), `torch-path` (ragctx's PyTorch path: per head, W x N), `naive`
(softmax(QK^T) for all heads at once in eager PyTorch), `full-attn` (the N x N attention matrix of one
layer's 8 heads, what `output_attentions=True` materialises; skipped where it cannot fit).
Run: `python benchmarks/kernel_bench.py --out kernel_bench.json` on a CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch

from ragctx.kernels.attention_mass import attention_mass


def timed(fn, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    ms = timed(lambda: dst.copy_(buf))
    return 2 * buf.numel() / (ms / 1000) / 1e9  # read + write, GB/s


def naive(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    group = q.shape[0] // k.shape[0]
    kk = k.repeat_interleave(group, dim=0)
    s = (q @ kk.transpose(1, 2)).float() / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1).sum(dim=(0, 1))  # last W rows: all keys visible


def full_attention(q_all: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    group = q_all.shape[0] // k.shape[0]
    kk = k.repeat_interleave(group, dim=0)
    s = (q_all @ kk.transpose(1, 2)) / math.sqrt(q_all.shape[-1])
    mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1)
    return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="kernel_bench.json")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth()
    rows = []
    for d in (64, 128):
        for n in (4096, 16384, 65536, 131072):
            q = torch.randn(8, 32, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(2, n, d, device="cuda", dtype=torch.bfloat16)
            bytes_read = (q.numel() + k.numel()) * 2
            out, _ = attention_mass(q, k, use_triton=True)
            ref, _ = attention_mass(q.float(), k.float(), use_triton=False)
            err = float((out - ref).abs().max())
            row = {"N": n, "head_dim": d, "max_abs_err_vs_fp32": err}
            for name, fn in {
                "triton": lambda q=q, k=k: attention_mass(q, k, use_triton=True),
                "torch-path": lambda q=q, k=k: attention_mass(q, k, use_triton=False),
                "naive": lambda q=q, k=k: naive(q, k),
            }.items():
                ms = timed(fn)
                row[f"{name}_ms"] = ms
                row[f"{name}_GBps"] = bytes_read / (ms / 1000) / 1e9
            if n <= 16384:
                q_all = torch.randn(8, n, d, device="cuda", dtype=torch.bfloat16)
                row["full-attn_ms"] = timed(lambda q_all=q_all, k=k: full_attention(q_all, k), reps=5)
                del q_all
            rows.append(row)
            print(json.dumps(row))
            torch.cuda.empty_cache()
    result = {"device": dev, "copy_GBps": copy_gbs, "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({"device": dev, "copy_GBps": copy_gbs}))


if __name__ == "__main__":
    main()
