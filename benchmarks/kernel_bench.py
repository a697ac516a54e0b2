"""Head-scoring pass on the GPU: Triton kernel vs the PyTorch path vs the naive ways.

For N = 4k, 16k, 64k, 128k keys, W = 32 query rows, 8 query heads over 2 key heads (GQA group 4),
head_dim 64 and 128, bf16: milliseconds per call (median of CUDA-event-timed calls after warm-up; the
time includes launch overhead, as a caller sees it) and effective bandwidth (bytes of Q and K read /
time) against a device-to-device copy measured in the same run (bytes read + written / time).
Columns: `triton` (this kernel, same buffers every call, so K may sit in L2 when it fits), `triton-cold`
and `naive-cold` (rotating over enough copies of Q and K to overflow L2), `triton-gpu` (the kernel's
GPU time alone: CUDA-graph replay, no launch overhead), `triton-2launch` (the two passes as two plain
launches through Triton's JIT dispatch), `old-triton` (a previous kernel file, with --baseline, called
as its dispatch did), `torch-path` (ragctx's PyTorch path: per head, W x N), `naive` (softmax(QK^T) for
all heads at once in eager PyTorch), `full-attn` (one layer's N x N attention of 8 heads, what
output_attentions=True materialises per layer; N <= 16k). At the smallest N it also reports the host
time per call (back-to-back calls without sync).
--host-profile times the host side of a call piece by piece; --sweep times tile and range
configurations of the kernel (GPU time); --model times a forward of the SmolLM2-135M architecture
(random weights: timing only) with output_attentions=True against the head-scoring pass.
Run: `python benchmarks/kernel_bench.py --out-dir bench-out` on a CUDA machine; for before/after, e.g.
`git show a6975c9:ragctx/kernels/triton_mass.py > bench-out/old_triton_mass.py` and
`--baseline bench-out/old_triton_mass.py`. Writes kernel_bench.json and kernel_bench.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ragctx.kernels.attention_mass import attention_mass
from ragctx.kernels.triton_mass import attention_mass_triton

# SmolLM2-135M's config.json (as converted from the GGUF; read from /tmp/rc-cache/models/*/config.json).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def timed(fn: Callable[[int], Any], reps: int = 20, warmup: int = 3) -> float:
    """Median ms of `fn(i)` over reps calls, each bracketed by CUDA events."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn: Callable[[], Any], calls: int = 10, reps: int = 20) -> float:
    """GPU time per call without launch overhead: `calls` calls captured in a CUDA graph, replayed."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return timed(lambda _i: graph.replay(), reps=reps) / calls


def enqueue_us(fn: Callable[[int], Any], calls: int = 200) -> float:
    """Median host time per call over back-to-back calls (µs), five batches."""
    batches = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        batches.append((time.perf_counter() - t0) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(batches)


def copy_bandwidth() -> float:
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    ms = timed(lambda _i: dst.copy_(buf))
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


def load_baseline(path: str) -> Callable[..., torch.Tensor]:
    spec = importlib.util.spec_from_file_location("old_triton_mass", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.attention_mass_triton  # type: ignore[no-any-return]


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms / 1000) / 1e9


def bench_shapes(args: argparse.Namespace, l2_bytes: int) -> list[dict[str, Any]]:
    old = load_baseline(args.baseline) if args.baseline else None
    rows = []
    for d in args.dims:
        for n in args.ns:
            row = bench_shape(args, d, n, l2_bytes, old)
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    return rows


def bench_shape(
    args: argparse.Namespace, d: int, n: int, l2_bytes: int, old: Callable[..., torch.Tensor] | None
) -> dict[str, Any]:
    q = torch.randn(8, 32, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, n, d, device="cuda", dtype=torch.bfloat16)
    nbytes = (q.numel() + k.numel()) * 2
    scale = 1 / math.sqrt(d)
    # Copies to rotate through so that consecutive calls find nothing in L2.
    copies = [(q.clone(), k.clone()) for _ in range(max(2, math.ceil(3 * l2_bytes / nbytes)))]
    out, _ = attention_mass(q, k, use_triton=True)
    ref, _ = attention_mass(q.float(), k.float(), use_triton=False)
    row: dict[str, Any] = {
        "N": n,
        "head_dim": d,
        "max_abs_err_vs_fp32": float((out - ref).abs().max()),
        "rel_err_vs_fp32": float((out - ref).norm() / ref.norm()),
    }
    fns: dict[str, Callable[[int], Any]] = {
        "triton": lambda _i: attention_mass(q, k, use_triton=True),
        "triton-2launch": lambda _i: attention_mass_triton(q, k, None, None, scale, fused=False),
        "triton-cold": lambda i: attention_mass(*copies[i % len(copies)], use_triton=True),
        "torch-path": lambda _i: attention_mass(q, k, use_triton=False),
        "naive": lambda _i: naive(q, k),
        "naive-cold": lambda i: naive(*copies[i % len(copies)]),
    }
    if old is not None:  # as the old dispatch called it: positions and weights built per call
        fns["old-triton"] = lambda _i: old(q, k, None, None, scale)
    for name, fn in fns.items():
        ms = timed(fn, reps=args.reps)
        row[f"{name}_ms"] = ms
        row[f"{name}_GBps"] = gbps(nbytes, ms)
        if n == min(args.ns):  # host cost: back-to-back calls, no sync (the GPU keeps up at small N)
            row[f"{name}_enqueue_us"] = enqueue_us(fn)
    ms = graph_ms(lambda: attention_mass(q, k, use_triton=True))
    row["triton-gpu_ms"], row["triton-gpu_GBps"] = ms, gbps(nbytes, ms)
    row["triton-2launch-gpu_ms"] = graph_ms(lambda: attention_mass_triton(q, k, None, None, scale, fused=False))
    row["naive-gpu_ms"] = graph_ms(lambda: naive(q, k), calls=3)
    if old is not None:
        row["old-triton-gpu_ms"] = graph_ms(lambda: old(q, k, None, None, scale))
    if n <= 16384:
        q_all = torch.randn(8, n, d, device="cuda", dtype=torch.bfloat16)
        row["full-attn_ms"] = timed(lambda _i: full_attention(q_all, k), reps=5)
    return row


def _one_layer(qs: list[torch.Tensor], ks: list[torch.Tensor], i: int) -> None:
    attention_mass(qs[i % len(qs)], ks[i % len(ks)], use_triton=True)


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """GPU time (graph replay) of tile configurations, then of range sizes for the best tile per head_dim."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out: list[dict[str, Any]] = []
    for d in args.dims:
        scale = 1 / math.sqrt(d)
        cases = [
            (n, torch.randn(8, 32, d, device="cuda", dtype=torch.bfloat16),
             torch.randn(2, n, d, device="cuda", dtype=torch.bfloat16))
            for n in args.ns
        ]  # fmt: skip

        def gpu(cfg: dict[str, Any], n: int, q: torch.Tensor, k: torch.Tensor, scale: float = scale) -> float | None:
            try:
                return graph_ms(functools.partial(attention_mass_triton, q, k, None, None, scale, **cfg), reps=10)
            except Exception as exc:  # a tile that does not fit (shared memory, registers)
                print("config failed:", cfg, type(exc).__name__, str(exc)[:200], flush=True)
                return None

        tile_ns = [n for n in args.ns if n >= 16384] or args.ns
        results = []
        for bn in (64, 128):
            for nw in (4, 8):
                for ns in (2, 3, 4):
                    cfg = {"block_n": bn, "num_warps": nw, "num_stages": ns}
                    res: dict[str, Any] = {"head_dim": d, **cfg}
                    for n, q, k in cases:
                        if n in tile_ns:
                            res[str(n)] = gpu(cfg, n, q, k)
                    print(json.dumps(res), flush=True)
                    results.append(res)
                    out.append(res)
        ok = [r for r in results if all(r[str(n)] is not None for n in tile_ns)]
        best = min(ok, key=lambda r: sum(math.log(r[str(n)]) for n in tile_ns))
        tile = {key: best[key] for key in ("block_n", "num_warps", "num_stages")}
        for n, q, k in cases:
            for f1 in (0.5, 1, 2, 4):  # programs per multiprocessor and pass
                for fold in (8, 16, 32):
                    cfg = {**tile, "split": max(1, math.ceil(n / max(1, int(f1 * sms / 2)))), "fold": fold}
                    res = {"head_dim": d, "N": n, "f1": f1, **cfg, "gpu_ms": gpu(cfg, n, q, k)}
                    print(json.dumps(res), flush=True)
                    out.append(res)
        del cases
        torch.cuda.empty_cache()
    return out


def host_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Host µs per call of the pieces of a call (back-to-back, no sync; small N so the GPU keeps up)."""
    import triton
    import triton.language as tl

    from ragctx.kernels import triton_mass as tm

    @triton.jit
    def _noop(X, n):
        tl.store(X + tl.arange(0, 16), tl.zeros([16], tl.float32) + n, mask=tl.arange(0, 16) < n)

    d, n = 128, min(args.ns)
    q = torch.randn(8, 32, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, n, d, device="cuda", dtype=torch.bfloat16)
    scale = 1 / math.sqrt(d)
    buf = torch.empty(16, device="cuda")
    res: dict[str, Any] = {"N": n, "head_dim": d, "triton": triton.__version__}

    def jit_dispatch(_i: int) -> None:
        tm.FAST_LAUNCH = False
        attention_mass_triton(q, k, None, None, scale)
        tm.FAST_LAUNCH = True

    pieces: dict[str, Callable[[int], Any]] = {
        "attention_mass (dispatch + kernel)": lambda _i: attention_mass(q, k, use_triton=True),
        "attention_mass_triton": lambda _i: attention_mass_triton(q, k, None, None, scale),
        "attention_mass_triton through Triton's JIT dispatch": jit_dispatch,
        "attention_mass_triton, two launches": lambda _i: attention_mass_triton(q, k, None, None, scale, fused=False),
        "an empty Triton kernel (2 arguments)": lambda _i: _noop[(1,)](buf, 3),
        "torch.empty(N)": lambda _i: torch.empty(n, device="cuda"),
        "torch.cuda.current_stream": lambda _i: torch.cuda.current_stream(q.device).cuda_stream,
        "naive": lambda _i: naive(q, k),
    }
    for name, fn in pieces.items():
        res[name] = enqueue_us(fn)
        print(name, round(res[name], 1), flush=True)
    return res


def bench_model(args: argparse.Namespace) -> list[dict[str, Any]]:
    """SmolLM2-135M's architecture, random weights (timing only), eager attention, bf16, batch 1."""
    import transformers

    rows = []
    w = 32
    for n in args.model_ns:
        row: dict[str, Any] = {"N": n}
        cfg = transformers.LlamaConfig.from_dict({**SMOLLM2_135M, "max_position_embeddings": max(n, 8192)})
        for impl, attentions in (("sdpa", False), ("eager", False), ("eager", True)):
            name = f"forward-{impl}" + ("-output_attentions" if attentions else "")
            model = None
            torch.cuda.reset_peak_memory_stats()
            try:
                torch.manual_seed(0)
                with torch.device("cuda"):  # random init straight on the GPU: no trained weights needed
                    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
                model = model.to(dtype=torch.bfloat16).eval()
                ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")

                def fwd(_i: int, model: Any = model, ids: torch.Tensor = ids, attentions: bool = attentions) -> Any:
                    with torch.no_grad():
                        out = model(input_ids=ids, output_attentions=attentions, use_cache=False, logits_to_keep=1)
                    return None if out.attentions is None else len(out.attentions)

                row[f"{name}_ms"] = timed(fwd, reps=3, warmup=1)
                row[f"{name}_peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.cuda.OutOfMemoryError:
                row[f"{name}_ms"] = "OOM"
            finally:
                del model
                torch.cuda.empty_cache()
        # The head-scoring pass on the same shapes: 9 query heads over 3 key heads, head_dim 64, last W rows,
        # one call per layer (all 30 layers; keys and queries as a prefill with cache would hand them over).
        layers = cfg.num_hidden_layers
        qs = [torch.randn(9, w, 64, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
        ks = [torch.randn(3, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]

        def score_all(_i: int, qs: list[torch.Tensor] = qs, ks: list[torch.Tensor] = ks) -> None:
            for q, k in zip(qs, ks, strict=True):
                attention_mass(q, k, use_triton=True)

        row["head-scoring-30-layers_ms"] = timed(score_all, reps=10)
        row["head-scoring-1-layer_ms"] = timed(functools.partial(_one_layer, qs, ks))
        del qs, ks
        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    copy = result["copy_GBps"]
    lines = [
        f"Device: {result['device']}; copy {copy:.0f} GB/s (read + write); bf16, W = 32, 8 query / 2 key heads.",
        "",
        "| d | N | triton ms | GB/s | % copy | cold ms | GPU-only ms | GPU-only GB/s | 2-launch ms "
        "| 2-launch GPU-only ms | old triton ms | old GPU-only ms | naive ms | naive cold ms | naive GPU-only ms "
        "| triton vs naive | GPU-only vs naive GPU-only | torch-path ms | full-attn ms |",
        "|" + " --- |" * 19,
    ]

    def f(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        return f"{v:.3f}" if isinstance(v, float) else "-"

    for r in result.get("rows", []):
        lines.append(
            f"| {r['head_dim']} | {r['N']} | {f(r, 'triton_ms')} | {r['triton_GBps']:.0f} | "
            f"{100 * r['triton_GBps'] / copy:.0f}% | {f(r, 'triton-cold_ms')} | {f(r, 'triton-gpu_ms')} | "
            f"{r['triton-gpu_GBps']:.0f} | {f(r, 'triton-2launch_ms')} | {f(r, 'triton-2launch-gpu_ms')} | "
            f"{f(r, 'old-triton_ms')} | {f(r, 'old-triton-gpu_ms')} | {f(r, 'naive_ms')} | {f(r, 'naive-cold_ms')} | "
            f"{f(r, 'naive-gpu_ms')} | {r['naive_ms'] / r['triton_ms']:.2f}x | "
            f"{r['naive-gpu_ms'] / r['triton-gpu_ms']:.2f}x | {f(r, 'torch-path_ms')} | {f(r, 'full-attn_ms')} |"
        )
    enq = [r for r in result.get("rows", []) if "triton_enqueue_us" in r]
    if enq:
        lines += ["", "Host time per call (µs, back-to-back calls without sync, smallest N):", ""]
        for r in enq:
            parts = [f"{key[: -len('_enqueue_us')]} {v:.0f}" for key, v in r.items() if key.endswith("_enqueue_us")]
            lines.append(f"- d {r['head_dim']}: " + ", ".join(parts))
    if result.get("host_profile"):
        hp = result["host_profile"]
        lines += ["", f"Host µs per call, N = {hp['N']}, d = {hp['head_dim']}, Triton {hp['triton']}:", ""]
        lines += [f"- {key}: {v:.1f}" for key, v in hp.items() if isinstance(v, float)]
    if result.get("model"):
        lines += [
            "",
            "SmolLM2-135M architecture, random weights (timing only), bf16, batch 1; head-scoring: W = 32, 9/3 heads.",
            "",
            "| N | forward sdpa ms | forward eager ms | eager + output_attentions ms | peak GiB "
            "| head-scoring 30 layers ms | 1 layer ms |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["model"]:
            att = r.get("forward-eager-output_attentions_ms")
            lines.append(
                f"| {r['N']} | {f(r, 'forward-sdpa_ms')} | {f(r, 'forward-eager_ms')} | "
                f"{att if isinstance(att, str) else f(r, 'forward-eager-output_attentions_ms')} | "
                f"{f(r, 'forward-eager-output_attentions_peak_GiB')} | {f(r, 'head-scoring-30-layers_ms')} | "
                f"{f(r, 'head-scoring-1-layer_ms')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", default="bench-out", help="writes kernel_bench.json and kernel_bench.md here")
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--baseline", help="an older triton_mass.py to time alongside (before/after)")
    ap.add_argument("--sweep", action="store_true", help="time tile and range configurations")
    ap.add_argument("--no-shapes", action="store_true", help="skip the main table")
    ap.add_argument("--model", action="store_true", help="time output_attentions=True on SmolLM2-135M's shape")
    ap.add_argument("--model-ns", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--host-profile", action="store_true", help="host time of the pieces of one call")
    ap.add_argument("--reps", type=int, default=50, help="timed calls per measurement (median)")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "sms": props.multi_processor_count, "L2": l2}
    result["copy_GBps"] = copy_bandwidth()
    print(json.dumps(result), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)

    def save() -> str:  # after every section, so a later failure keeps what was measured
        with open(os.path.join(args.out_dir, "kernel_bench.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        md = markdown(result)
        with open(os.path.join(args.out_dir, "kernel_bench.md"), "w") as fh:
            fh.write(md)
        return md

    if not args.no_shapes:
        result["rows"] = bench_shapes(args, l2)
        save()
    if args.model:
        result["model"] = bench_model(args)
        save()
    if args.host_profile:
        result["host_profile"] = host_profile(args)
        save()
    if args.sweep:
        result["sweep"] = sweep(args)
    print(save())


if __name__ == "__main__":
    main()
