"""The head-scoring pass as a Triton kernel (CUDA; also runs under TRITON_INTERPRET=1 on the CPU).

Two passes over the keys, neither of which writes a W x N score matrix to global memory. The work is
laid out per key head: the GROUP query heads that share key head g are stacked into one (GROUP*W, d)
query matrix (rows r = head-in-group * W + w), so each key tile is read once per group and fed to the
tensor cores as one large product instead of GROUP small ones.

1. Pass 1 (`_stats_program`, one program per key range x key head x row tile): stream the range and
   keep, per query row, the running maximum and normaliser of its softmax (online softmax, base 2).
   Write these per-range partials (at most MAX_SPLITS x rows floats per key head, not W x N).
2. Pass 2 (`_mass_program`, one program per key range): fold the partials of every range into each
   row's final (max, normaliser) -- cheap, W is small -- then stream the range for every key head,
   recompute the probabilities from Q.K and sum them (weighted per head) over rows straight into the
   output: no combine step on the host, no partial per key head.

Both passes run in ONE launch (`_attention_mass`, PHASE 0): the first P1 programs do pass 1 and signal
a counter; the others wait on it, then do pass 2. Below ~128k keys a call costs more host time than
GPU time, so the host side is kept lean too: the launch plan is cached per shape, the partials and
counters live in a per-stream workspace, and repeated launches go through the compiled kernel's own
launcher instead of Triton's JIT dispatch (see `_launch_fused`). PHASE 1 and 2 run the passes as two
plain launches (`fused=False`; tests, comparison).

The number of programs follows N and the number of multiprocessors (about one per SM per pass), so
small N still fills the GPU and large N gets long, pipelined streams. Pass 2 walks its keys backwards:
the keys pass 1 read last are the ones most likely still in L2.
Inputs fp16, bf16 or fp32; accumulation in fp32; head_dim 64 or 128 (any power of two >= 16).
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel

LOG2E = 1.4426950408889634
# Pass 2 loads each row's partials as one [MAX_SPLITS, BLOCK_M] tile; 64 keeps that tile within the
# registers the main loop needs anyway, and 64 ranges per key head is enough to fill 132 SMs.
MAX_SPLITS = 64


@triton.jit
def _positions(QPOS, rows, W, N, HAS_QPOS: tl.constexpr):
    # Row r is query w = r % W of its head; by default the queries are the last W positions.
    w = rows % W
    if HAS_QPOS:
        pos = tl.load(QPOS + w)
    else:
        pos = N - W + w
    return pos


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs: full precision (the tensor cores' tf32 would cost ~1e-3 relative)
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _stats_program(
    sid, pair, Q, K, QPOS, PM, PL,
    N, W, GW, S, RANGE, c, stride_kh, stride_kn,
    MT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    HAS_QPOS: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Pass 1 for key range `sid` and (key head, row tile) `pair`: per-row max and normaliser."""
    kvh = pair // MT
    rows = (pair % MT) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < GW
    offs_d = tl.arange(0, D)
    q = tl.load(Q + (kvh * GW + rows)[:, None] * D + offs_d[None, :], mask=rmask[:, None], other=0.0)
    pos = _positions(QPOS, rows, W, N, HAS_QPOS)
    # Keys below `vis` are visible to every live row, so those blocks need no causal mask. Rows that are
    # padding or lie before the sequence (pos < 0) are ignored here and zeroed in pass 2.
    live = rmask & (pos >= 0)
    vis = tl.min(tl.where(live, pos + 1, N), 0)
    start = sid * RANGE
    end = tl.minimum(N, start + RANGE)
    n_full = tl.maximum(tl.minimum(end, vis) - start, 0) // BLOCK_N
    n_all = tl.cdiv(end - start, BLOCK_N)
    kb = K + kvh * stride_kh
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    norm = tl.zeros([BLOCK_M], tl.float32)
    for i in range(0, n_full):  # the bulk: no masks, every score finite
        offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(kb + offs_n[:, None] * stride_kn + offs_d[None, :])
        s = _dot(q, tl.trans(k), IEEE) * c
        m_new = tl.maximum(m, tl.max(s, 1))
        norm = norm * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m = m_new
    for i in range(n_full, n_all):  # the causal edge and the end of the range (a block or two)
        offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = offs_n < end
        k = tl.load(kb + offs_n[:, None] * stride_kn + offs_d[None, :], mask=inside[:, None], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * c
        s = tl.where((offs_n[None, :] <= pos[:, None]) & inside[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
        norm = norm * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m = m_new
    out = (pair * S + sid) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(PM + out, m)
    tl.store(PL + out, norm)


@triton.jit
def _mass_block(
    kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, OUT, first,
    MASKED: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # Keys on the rows of the tile: the per-key sum over query rows is then a reduction along axis 1.
    if MASKED:
        inside = offs_n < end
        k = tl.load(kb + offs_n[:, None] * stride_kn + offs_d[None, :], mask=inside[:, None], other=0.0)
    else:
        k = tl.load(kb + offs_n[:, None] * stride_kn + offs_d[None, :])
    # bias = row max + log2(normaliser): one FMA and one exp2 give the normalised probability.
    p = tl.exp2(_dot(k, qt, IEEE) * c - bias[None, :])
    if MASKED:
        p = tl.where((offs_n[:, None] <= pos[None, :]) & inside[:, None], p, 0.0)
    if HAS_W:
        p = p * wt[None, :]
    mass = tl.sum(p, 1)
    # The program owns these keys: the first (key head, row tile) stores, the others add (fire-and-forget
    # reductions, so no load of the previous value stalls the loop; one program, so a fixed order).
    if first:
        tl.store(OUT + offs_n, mass, mask=offs_n < end)
    else:
        tl.atomic_add(OUT + offs_n, mass, mask=offs_n < end, sem="relaxed")


@triton.jit
def _mass_program(
    rid, Q, K, QPOS, PM, PL, HW, OUT,
    N, W, GW, HKV, S, RANGE, c, stride_kh, stride_kn,
    GROUP: tl.constexpr, MT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr, D: tl.constexpr, HAS_QPOS: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Pass 2 for key range `rid`: the mass of each of its keys, over every key head and query row."""
    start = rid * RANGE
    end = tl.minimum(N, start + RANGE)
    n_all = tl.cdiv(end - start, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_m = tl.arange(0, BLOCK_M)
    offs_s = tl.arange(0, BLOCK_S)
    for pair in range(0, HKV * MT):
        kvh = pair // MT
        rows = (pair % MT) * BLOCK_M + offs_m
        rmask = rows < GW
        pos = _positions(QPOS, rows, W, N, HAS_QPOS)
        # Fold the S per-range partials of every row into its softmax max and normaliser. ".cg" reads
        # them from L2: in the fused launch other programs of this same kernel wrote them.
        part = (pair * S + offs_s)[:, None] * BLOCK_M + offs_m[None, :]
        smask = (offs_s < S)[:, None]
        pm = tl.load(PM + part, mask=smask, other=float("-inf"), cache_modifier=".cg")
        pl = tl.load(PL + part, mask=smask, other=0.0, cache_modifier=".cg")
        m = tl.max(pm, 0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        norm = tl.sum(pl * tl.exp2(pm - m_safe[None, :]), 0)
        live = rmask & (pos >= 0) & (norm > 0)
        # bias +inf: the row (padding, before the sequence start) contributes exactly 0
        bias = tl.where(live, m_safe + tl.log2(tl.where(live, norm, 1.0)), float("inf"))
        if HAS_W:
            wt = tl.load(HW + kvh * GROUP + rows // W, mask=rmask, other=0.0)
        else:
            wt = tl.full([BLOCK_M], 1.0, tl.float32)
        q = tl.load(Q + (kvh * GW + rows)[:, None] * D + offs_d[None, :], mask=rmask[:, None], other=0.0)
        qt = tl.trans(q)
        vis = tl.min(tl.where(live, pos + 1, N), 0)
        n_full = tl.maximum(tl.minimum(end, vis) - start, 0) // BLOCK_N
        kb = K + kvh * stride_kh
        first = pair == 0
        tl.debug_barrier()  # the previous pair's stores are visible before this pair adds to them
        for i in range(n_full, n_all):
            offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
            _mass_block(kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, OUT, first,
                        True, HAS_W, IEEE)  # fmt: skip
        for j in range(0, n_full):  # backwards: the keys pass 1 read last may still be in L2
            offs_n = start + (n_full - 1 - j) * BLOCK_N + tl.arange(0, BLOCK_N)
            _mass_block(kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, OUT, first,
                        False, HAS_W, IEEE)  # fmt: skip


# Sizes and counts are not specialised on (divisibility by 16, == 1): fewer variants to compile, and a
# cheaper argument check at every launch. The strides are, so that K loads stay vectorised.
@triton.jit(do_not_specialize=["N", "W", "GW", "HKV", "S", "RANGE1", "RANGE2", "P1", "P2"])
def _attention_mass(
    Q, K, QPOS, HW, STATS, OUT, SYNC,
    N, W, GW, HKV, S, RANGE1, RANGE2, P1, P2, c,
    stride_kh, stride_kn,
    GROUP: tl.constexpr, MT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr, D: tl.constexpr, HAS_QPOS: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
    PHASE: tl.constexpr,
):  # fmt: skip
    """PHASE 1: pass 1 only (P1 programs); 2: pass 2 only (P2 programs); 0: both in one launch.

    In the one launch, programs 0..P1-1 run pass 1 and P1.. run pass 2. Each pass-1 program bumps
    SYNC[0] when its partials are stored; pass-2 programs wait for SYNC[0] == P1. The GPU hands out
    programs in index order, so every pass-1 program is running or done before any pass-2 program
    starts waiting: no deadlock, whatever the grid size. The last pass-2 program to finish (SYNC[1])
    zeroes both counters for the next launch on the stream.
    """
    pid = tl.program_id(0)
    PM = STATS
    PL = STATS + HKV * MT * S * BLOCK_M
    if PHASE == 1:
        _stats_program(pid % S, pid // S, Q, K, QPOS, PM, PL, N, W, GW, S, RANGE1, c, stride_kh, stride_kn,
                       MT, BLOCK_M, BLOCK_N, D, HAS_QPOS, IEEE)  # fmt: skip
    elif PHASE == 2:
        _mass_program(pid, Q, K, QPOS, PM, PL, HW, OUT, N, W, GW, HKV, S, RANGE2, c, stride_kh, stride_kn,
                      GROUP, MT, BLOCK_M, BLOCK_N, BLOCK_S, D, HAS_QPOS, HAS_W, IEEE)  # fmt: skip
    else:
        if pid < P1:
            _stats_program(pid % S, pid // S, Q, K, QPOS, PM, PL, N, W, GW, S, RANGE1, c, stride_kh, stride_kn,
                           MT, BLOCK_M, BLOCK_N, D, HAS_QPOS, IEEE)  # fmt: skip
            tl.debug_barrier()  # every thread's partials are stored before the release below
            tl.atomic_add(SYNC, 1, sem="release")
        else:
            done = tl.atomic_add(SYNC, 0, sem="acquire")
            while done < P1:
                done = tl.atomic_add(SYNC, 0, sem="acquire")
            _mass_program(pid - P1, Q, K, QPOS, PM, PL, HW, OUT, N, W, GW, HKV, S, RANGE2, c,
                          stride_kh, stride_kn,
                          GROUP, MT, BLOCK_M, BLOCK_N, BLOCK_S, D, HAS_QPOS, HAS_W, IEEE)  # fmt: skip
            tl.debug_barrier()
            if tl.atomic_add(SYNC + 1, 1, sem="acq_rel") == P2 - 1:
                tl.atomic_xchg(SYNC, 0)
                tl.atomic_xchg(SYNC + 1, 0)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs(device: torch.device) -> int:
    """Programs per pass that fill the GPU (one per multiprocessor); small under the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _range(n: int, programs: int, block_n: int, max_programs: int | None = None) -> int:
    """Keys per program: a multiple of block_n giving about `programs` programs (at most max_programs)."""
    blocks = triton.cdiv(n, block_n)
    per = triton.cdiv(blocks, max(1, min(programs, blocks)))
    if max_programs is not None:
        per = max(per, triton.cdiv(blocks, max_programs))
    return per * block_n


_WORKSPACE: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, stats_numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(two int32 counters for the one-launch mode, fp32 partial statistics), per device and stream.

    Kept between calls to save allocations (host time is most of a call below ~64k keys). Launches on
    one stream run one after another, every launch rewrites the partials before reading them and leaves
    the counters at zero, so a stream can reuse both; two streams must not share them.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    ws = _WORKSPACE.get((device, stream))
    if ws is None or ws[1].numel() < stats_numel:
        sync = ws[0] if ws is not None else torch.zeros(2, device=device, dtype=torch.int32)
        ws = _WORKSPACE[(device, stream)] = (sync, torch.empty(stats_numel, device=device, dtype=torch.float32))
    return ws


class _Plan(NamedTuple):
    """Everything about a launch that follows from the shapes, dtypes and options alone."""

    p1: int  # pass-1 programs
    p2: int  # pass-2 programs
    ints: tuple[int, ...]  # the kernel's integer arguments N .. P2
    meta: dict[str, Any]  # compile-time parameters, num_warps, num_stages
    consts: tuple[Any, ...]  # the constexpr values in signature order (PHASE = 0), for the launcher
    stats_numel: int
    launchers: dict[tuple[bool, ...], Any]  # pointer alignment -> the compiled kernel's own launcher


_PLANS: dict[tuple[Any, ...], _Plan] = {}
# Set RAGCTX_TRITON_FAST_LAUNCH=0 to always go through Triton's JIT dispatch (see _launch_fused).
FAST_LAUNCH = os.environ.get("RAGCTX_TRITON_FAST_LAUNCH", "1") != "0"


def attention_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor | None,
    head_weights: torch.Tensor | None,
    scale: float,
    *,
    fused: bool = True,
    block_n: int | None = None,
    split: int | None = None,
    keys_per_program: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Mass per key (N,) in fp32; same contract as the PyTorch path (see attention_mass).

    q_positions None means the last W positions; head_weights None means weight 1 for every head.
    `fused` runs both passes in one launch (host time per launch dominates below ~128k keys); False
    runs them as two launches. The other keyword arguments override the heuristics (tests, the
    benchmark's sweep): `split` is the number of keys per pass-1 program, `keys_per_program` the same
    for pass 2.
    """
    dev = q.device
    if k.shape[1] == 0:
        return torch.zeros(0, device=dev, dtype=torch.float32)
    q = q.contiguous()  # viewed as (Hkv, GROUP*W, d): the heads of a group are consecutive
    if k.dtype != q.dtype or k.stride(-1) != 1:
        k = k.to(q.dtype).contiguous()
    has_qpos, has_w = q_positions is not None, head_weights is not None
    # Host time is most of a call below ~128k keys: the arithmetic below is done once per shape.
    key: tuple[Any, ...] = (q.shape, k.shape, k.stride(), q.dtype, dev, has_qpos, has_w)
    key += (block_n, split, keys_per_program, num_warps, num_stages)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(q, k, has_qpos, has_w, block_n, split, keys_per_program, num_warps, num_stages)
    qpos = q_positions.to(device=dev, dtype=torch.int32) if q_positions is not None else q
    hw = head_weights.to(device=dev, dtype=torch.float32) if head_weights is not None else q
    sync, stats = _workspace(dev, plan.stats_numel)  # stats: P1 x BLOCK_M maxima, then normalisers
    out = torch.empty(k.shape[1], device=dev, dtype=torch.float32)
    # softmax in base 2: exp(x * scale) = exp2(x * scale * log2(e))
    args = (q, k, qpos, hw, stats, out, sync, *plan.ints, scale * LOG2E, k.stride(0), k.stride(1))
    if fused:
        _launch_fused(plan, args)
    else:
        _attention_mass[(plan.p1,)](*args, PHASE=1, **plan.meta)
        _attention_mass[(plan.p2,)](*args, PHASE=2, **plan.meta)
    return out


def _launch_fused(plan: _Plan, args: tuple[Any, ...]) -> None:
    """One launch of both passes.

    Triton's JIT dispatch (binding and specialising ~30 arguments, looking up the compiled kernel)
    costs about as much host time as the rest of a call together (35 of 65 us on the H200 machine's
    CPU). The compiled kernel's own launcher skips it (11 us). It is reused only for what Triton
    specialised the compiled kernel on: the plan fixes the shapes, dtypes, strides and integers (sizes
    and counts are not specialised), and the key below adds the 16-byte alignment of the pointers the
    caller passed. The first launch of each goes through the JIT (compiling if needed); so does every
    launch under the CPU interpreter, which has no compiled kernel.
    """
    grid = (plan.p1 + plan.p2,)
    if not FAST_LAUNCH:
        _attention_mass[grid](*args, PHASE=0, **plan.meta)
        return
    align = tuple(t.data_ptr() % 16 == 0 for t in args[:4])  # Q, K, QPOS, HW (the rest: fresh allocations)
    launcher = plan.launchers.get(align)
    if launcher is not None:
        launcher(*args, *plan.consts)
        return
    kernel = _attention_mass[grid](*args, PHASE=0, **plan.meta)
    if isinstance(kernel, CompiledKernel):
        plan.launchers[align] = kernel[(grid[0], 1, 1)]


def _make_plan(
    q: torch.Tensor,
    k: torch.Tensor,
    has_qpos: bool,
    has_w: bool,
    block_n: int | None,
    split: int | None,
    keys_per_program: int | None,
    num_warps: int | None,
    num_stages: int | None,
) -> _Plan:
    hq, w, d = q.shape
    hkv, n, _ = k.shape
    group = hq // hkv
    gw = group * w
    # Row tile: all rows of a group when they fit 128 (GQA 4 x W 32 = one 128-row tensor-core tile).
    block_m = max(16, min(128, triton.next_power_of_2(gw)))
    mt = triton.cdiv(gw, block_m)
    # Defaults from the H200 sweep (benchmarks/kernel_bench.py --sweep, GPU time): 128-key tiles, three
    # stages; two warpgroups for head_dim 64 (more softmax work per byte), one for 128.
    if block_n is None:
        block_n = 128
    if num_warps is None:
        num_warps = 8 if d <= 64 and block_m >= 128 else 4
    if num_stages is None:
        num_stages = 3
    sms = _programs(q.device)
    # Pass 1: about one program per multiprocessor over (ranges x key heads x row tiles).
    range1 = split if split is not None else _range(n, triton.cdiv(sms, hkv * mt), block_n)
    range1 = max(block_n, triton.cdiv(range1, block_n) * block_n)
    range1 = max(range1, _range(n, MAX_SPLITS, block_n, MAX_SPLITS))
    splits = triton.cdiv(n, range1)
    p1 = splits * hkv * mt
    # Pass 2: one program per multiprocessor, each over all key heads of its range (more programs
    # measured slower: each one re-reads every row's partials).
    range2 = keys_per_program if keys_per_program is not None else _range(n, sms, block_n)
    range2 = max(block_n, triton.cdiv(range2, block_n) * block_n)
    p2 = triton.cdiv(n, range2)
    names = ("GROUP", "MT", "BLOCK_M", "BLOCK_N", "BLOCK_S", "D", "HAS_QPOS", "HAS_W", "IEEE")
    values = (group, mt, block_m, block_n, max(2, triton.next_power_of_2(splits)), d, has_qpos, has_w)
    consts: tuple[Any, ...] = (*values, q.dtype == torch.float32)
    meta: dict[str, Any] = dict(zip(names, consts, strict=True))
    meta.update(num_warps=num_warps, num_stages=num_stages)
    consts += (0,)  # PHASE: the launcher is only used for the one-launch mode
    ints = (n, w, gw, hkv, splits, range1, range2, p1, p2)
    return _Plan(p1, p2, ints, meta, consts, 2 * p1 * block_m, {})
