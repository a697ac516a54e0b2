"""The head-scoring pass as a Triton kernel (CUDA; also runs under TRITON_INTERPRET=1 on the CPU).

Two passes over the keys, neither of which writes a W x N score matrix to global memory. The work is
laid out per key head: the GROUP query heads that share key head g are stacked into one (GROUP*W, d)
query matrix (rows r = head-in-group * W + w), so each key tile is read once per group and fed to the
tensor cores as one large product instead of GROUP small ones. A "pair" is a key head with one tile of
at most 128 of those rows (one pair per key head for GQA 4 x W 32).

1. Pass 1 (`_stats_program`, one program per key range x pair): stream the range and keep, per query
   row, the running maximum and normaliser of its softmax (online softmax, base 2). Groups of FOLD
   consecutive ranges are folded into one partial by whichever program of the group finishes last,
   so pass 2 reads at most (ranges / FOLD) partials per row, however finely pass 1 was split.
2. Pass 2 (`_mass_program`, one program per key range x pair, the same ranges): fold the group
   partials into each row's final (max, normaliser), stream the range backwards (what pass 1 read
   last is the likeliest still in L2), recompute the probabilities from Q.K and sum them (weighted
   per head) over the rows. Two pairs add into the output (0 + a + b is the same float in either
   order); more pairs store apart and the pair that finishes a range last adds them up in pair order:
   the same bits at every run.

Both passes run in ONE launch (`_attention_mass`, PHASE 0): the first P1 programs do pass 1, the
others wait on a counter, then do pass 2. Below ~64k keys a call costs more host time than GPU time,
so the host side is kept lean too: the launch plan is cached per shape, partials and counters live in
a per-stream workspace, and repeated launches go through the compiled kernel's own launcher instead
of Triton's JIT dispatch (see `_launch_fused`). PHASE 1 and 2 run the passes as two plain launches
(`fused=False`; tests, comparison).

Sizes: about two programs per multiprocessor in each pass (64-key tiles, one warpgroup, three stages:
~83 KB of shared memory each), from sweeps on an H100 (see README). Each score element costs a dot
product and an exp2 in each pass; on the H100 neither the tensor cores nor the exp2 units saturate
(about a third of peak each), so the passes are latency-bound, not bandwidth-bound (README,
"Head-scoring pass").
Inputs fp16, bf16 or fp32; accumulation in fp32; head_dim 64 or 128 (any power of two >= 16).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel

LOG2E = 1.4426950408889634


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
def _fold(PM, PL, first, count, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """Fold `count` consecutive (max, normaliser) partials of BLOCK_M rows, starting at partial `first`,
    into one: always in index order, so the result does not depend on which program folds."""
    offs_f = tl.arange(0, BLOCK_F)
    offs_m = tl.arange(0, BLOCK_M)
    at = (first + offs_f)[:, None] * BLOCK_M + offs_m[None, :]
    fmask = (offs_f < count)[:, None]
    # ".cg": read from L2, where other programs of this launch wrote them
    pm = tl.load(PM + at, mask=fmask, other=float("-inf"), cache_modifier=".cg")
    pl = tl.load(PL + at, mask=fmask, other=0.0, cache_modifier=".cg")
    m = tl.max(pm, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    return m, tl.sum(pl * tl.exp2(pm - m_safe[None, :]), 0)


@triton.jit
def _mass_block(
    kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, DEST,
    MASKED: tl.constexpr, ADD: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
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
    if ADD:  # fire-and-forget: no load of the old value stalls the loop
        tl.atomic_add(DEST + offs_n, tl.sum(p, 1), mask=offs_n < end, sem="relaxed")
    else:
        tl.store(DEST + offs_n, tl.sum(p, 1), mask=offs_n < end)


@triton.jit
def _mass_program(
    rid, pair, Q, K, QPOS, PM2, PL2, HW, OUT, PMASS, RCOUNT,
    N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
    GROUP: tl.constexpr, MT: tl.constexpr, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Pass 2 for key range `rid` and (key head, row tile) `pair`: each key's probability summed over
    the pair's rows (weighted per head). One pair stores into the output. Two pairs add into the
    output, which pass 1 zeroed: 0 + a + b is the same float in either order. More pairs store their
    sums apart and the pair that finishes a range last adds them up in pair order. So the result is
    the same bits at every run."""
    start = rid * RANGE
    end = tl.minimum(N, start + RANGE)
    n_all = tl.cdiv(end - start, BLOCK_N)
    offs_d = tl.arange(0, D)
    kvh = pair // MT
    rows = (pair % MT) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < GW
    pos = _positions(QPOS, rows, W, N, HAS_QPOS)
    m, norm = _fold(PM2, PL2, pair * NG, NG, BLOCK_M, BLOCK_G)  # each row's softmax max and normaliser
    m_safe = tl.where(m == float("-inf"), 0.0, m)
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
    dest = OUT if PAIRS <= 2 else PMASS + pair * N
    for i in range(n_full, n_all):
        offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        _mass_block(kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, dest, True, PAIRS == 2, HAS_W, IEEE)
    for j in range(0, n_full):  # backwards: the keys pass 1 read last are the likeliest still in L2
        offs_n = start + (n_full - 1 - j) * BLOCK_N + tl.arange(0, BLOCK_N)
        _mass_block(kb, offs_n, offs_d, stride_kn, qt, bias, wt, pos, end, c, dest, False, PAIRS == 2, HAS_W, IEEE)
    if PAIRS > 2:
        tl.debug_barrier()  # every thread's sums are stored before the release below
        if tl.atomic_add(RCOUNT + rid, 1, sem="acq_rel") == PAIRS - 1:
            for i in range(0, n_all):
                offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
                total = tl.zeros([BLOCK_N], tl.float32)
                for p in range(0, PAIRS):
                    total += tl.load(PMASS + p * N + offs_n, mask=offs_n < end, other=0.0, cache_modifier=".cg")
                tl.store(OUT + offs_n, total, mask=offs_n < end)


# Sizes and counts are not specialised on (divisibility by 16, == 1): fewer variants to compile, and a
# cheaper argument check at every launch. The strides are, so that K loads stay vectorised.
@triton.jit(do_not_specialize=["N", "W", "GW", "S", "NG", "RANGE", "P1", "SET", "PARITY"])
def _attention_mass(
    Q, K, QPOS, HW, STATS, PMASS, OUT, SYNC,
    N, W, GW, S, NG, RANGE, P1, SET, PARITY, c,
    stride_kh, stride_kn,
    GROUP: tl.constexpr, MT: tl.constexpr, PAIRS: tl.constexpr, FOLD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr, PHASE: tl.constexpr,
):  # fmt: skip
    """PHASE 1: pass 1 only; 2: pass 2 only; 0: both in one launch. P1 = PAIRS x S programs per pass.

    Synchronisation, through counters. SYNC holds two sets of SET counters; a launch uses set PARITY
    (the host alternates it) and its program 0 zeroes the other set for the next launch, so no
    program has to wait at the end to reset anything. In the set:
    - [0] ready: pass-1 programs come in groups of FOLD consecutive ranges of one pair; the one of a
      group that finishes last (its counter [1 + group]) folds the group's partials into one and
      bumps `ready`. Pass-2 programs wait for ready == PAIRS x NG, then fold the NG group partials of
      their pair: at most NG x BLOCK_M values each, however many ranges pass 1 had.
    - [1 + PAIRS*NG + range]: per key range, which pair's sums arrive last (more than two pairs).
    In the one launch programs 0..P1-1 run pass 1 and P1.. pass 2. The GPU hands out programs in index
    order, so every pass-1 program is running or done before any pass-2 program starts waiting: no
    deadlock, whatever the grid size.
    """
    pid = tl.program_id(0)
    PM = STATS
    PL = STATS + P1 * BLOCK_M
    PM2 = STATS + 2 * P1 * BLOCK_M
    PL2 = PM2 + PAIRS * NG * BLOCK_M
    CNT = SYNC + PARITY * SET
    if PHASE != 2 and pid == 0:
        spare = SYNC + (1 - PARITY) * SET
        for i in range(0, tl.cdiv(SET, 256)):
            at = i * 256 + tl.arange(0, 256)
            tl.store(spare + at, tl.zeros([256], tl.int32), mask=at < SET)
    if PHASE == 1:
        _pass1(pid, Q, K, QPOS, PM, PL, PM2, PL2, CNT, OUT, N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
               MT, PAIRS, FOLD, BLOCK_M, BLOCK_N, D, HAS_QPOS, IEEE)  # fmt: skip
    elif PHASE == 2:
        _pass2(pid, Q, K, QPOS, PM2, PL2, HW, OUT, PMASS, CNT, N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
               GROUP, MT, PAIRS, BLOCK_M, BLOCK_N, BLOCK_G, D, HAS_QPOS, HAS_W, IEEE)  # fmt: skip
    else:
        if pid < P1:
            _pass1(pid, Q, K, QPOS, PM, PL, PM2, PL2, CNT, OUT, N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
                   MT, PAIRS, FOLD, BLOCK_M, BLOCK_N, D, HAS_QPOS, IEEE)  # fmt: skip
        else:
            _pass2(pid - P1, Q, K, QPOS, PM2, PL2, HW, OUT, PMASS, CNT, N, W, GW, S, NG, RANGE, c,
                   stride_kh, stride_kn,
                   GROUP, MT, PAIRS, BLOCK_M, BLOCK_N, BLOCK_G, D, HAS_QPOS, HAS_W, IEEE)  # fmt: skip


@triton.jit
def _pass1(
    pid, Q, K, QPOS, PM, PL, PM2, PL2, CNT, OUT,
    N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
    MT: tl.constexpr, PAIRS: tl.constexpr, FOLD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, HAS_QPOS: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Pass 1 of program `pid`, then, if it is the last of its group of FOLD ranges, the group's fold."""
    pair = pid // S
    sid = pid % S
    _stats_program(sid, pair, Q, K, QPOS, PM, PL, N, W, GW, S, RANGE, c, stride_kh, stride_kn,
                   MT, BLOCK_M, BLOCK_N, D, HAS_QPOS, IEEE)  # fmt: skip
    if PAIRS == 2 and pair == 0:  # pass 2 adds into the output: start it at zero
        start = sid * RANGE
        for i in range(0, tl.cdiv(RANGE, BLOCK_N)):
            offs_n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(OUT + offs_n, tl.zeros([BLOCK_N], tl.float32), mask=offs_n < tl.minimum(N, start + RANGE))
    tl.debug_barrier()  # every thread's partials are stored before the release below
    g = sid // FOLD
    first = g * FOLD
    count = tl.minimum(FOLD, S - first)
    gcount = CNT + 1 + pair * NG + g
    if tl.atomic_add(gcount, 1, sem="acq_rel") == count - 1:
        m, norm = _fold(PM, PL, pair * S + first, count, BLOCK_M, FOLD)
        at = (pair * NG + g) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(PM2 + at, m)
        tl.store(PL2 + at, norm)
        tl.debug_barrier()
        tl.atomic_add(CNT, 1, sem="release")


@triton.jit
def _pass2(
    pid, Q, K, QPOS, PM2, PL2, HW, OUT, PMASS, CNT,
    N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
    GROUP: tl.constexpr, MT: tl.constexpr, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_W: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Pass 2 of program `pid` once every group's fold is stored."""
    ready = tl.atomic_add(CNT, 0, sem="acquire")
    while ready < PAIRS * NG:
        ready = tl.atomic_add(CNT, 0, sem="acquire")
    _mass_program(pid % S, pid // S, Q, K, QPOS, PM2, PL2, HW, OUT, PMASS, CNT + 1 + PAIRS * NG,
                  N, W, GW, S, NG, RANGE, c, stride_kh, stride_kn,
                  GROUP, MT, PAIRS, BLOCK_M, BLOCK_N, BLOCK_G, D, HAS_QPOS, HAS_W, IEEE)  # fmt: skip


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs(device: torch.device) -> int:
    """Programs per pass that fill the GPU: two per multiprocessor (one program's loads, tensor-core
    products and exponentials overlap with the other's); a few under the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return 2 * _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _range(n: int, programs: int, block_n: int) -> int:
    """Keys per program: a multiple of block_n giving about `programs` programs."""
    blocks = triton.cdiv(n, block_n)
    return triton.cdiv(blocks, max(1, min(programs, blocks))) * block_n


@dataclass
class _Workspace:
    sync: torch.Tensor  # int32: two sets of `set_size` counters (see _attention_mass)
    stats: torch.Tensor  # fp32 partial statistics
    pmass: torch.Tensor  # fp32 per-pair key sums (more than two pairs only)
    set_size: int
    parity: int = 0  # the counter set the next launch uses


_WORKSPACE: dict[tuple[torch.device, int], _Workspace] = {}


def _workspace(device: torch.device, set_size: int, stats_numel: int, pmass_numel: int) -> _Workspace:
    """Counters and scratch buffers, per device and stream, grown as needed.

    Kept between calls to save allocations (host time is most of a call below ~64k keys). Launches on
    one stream run one after another, every launch rewrites the scratch before reading it and zeroes
    the counter set the next launch uses, so a stream can reuse them; two streams must not share them.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    ws = _WORKSPACE.get((device, stream))
    if ws is None or ws.set_size < set_size or ws.stats.numel() < stats_numel or ws.pmass.numel() < pmass_numel:
        old = (0, 0, 0) if ws is None else (ws.set_size, ws.stats.numel(), ws.pmass.numel())
        size = max(set_size, old[0])
        ws = _WORKSPACE[(device, stream)] = _Workspace(
            torch.zeros(2 * size, device=device, dtype=torch.int32),
            torch.empty(max(stats_numel, old[1]), device=device, dtype=torch.float32),
            torch.empty(max(pmass_numel, old[2], 1), device=device, dtype=torch.float32),
            size,
        )
    return ws


class _Plan(NamedTuple):
    """Everything about a launch that follows from the shapes, dtypes and options alone."""

    p1: int  # programs per pass
    ints: tuple[int, ...]  # the kernel's integer arguments N .. P1
    meta: dict[str, Any]  # compile-time parameters, num_warps, num_stages
    consts: tuple[Any, ...]  # the constexpr values in signature order (PHASE = 0), for the launcher
    set_size: int  # counters per launch
    stats_numel: int
    pmass_numel: int
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
    fold: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Mass per key (N,) in fp32; same contract as the PyTorch path (see attention_mass).

    q_positions None means the last W positions; head_weights None means weight 1 for every head.
    `fused` runs both passes in one launch (host time per launch dominates below ~128k keys); False
    runs them as two launches. The other keyword arguments override the heuristics (tests, the
    benchmark's sweep): `split` is the number of keys per program, `fold` the number of pass-1 ranges
    whose statistics one program folds together.
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
    key += (block_n, split, fold, num_warps, num_stages)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(q, k, has_qpos, has_w, block_n, split, fold, num_warps, num_stages)
    qpos = q_positions.to(device=dev, dtype=torch.int32) if q_positions is not None else q
    hw = head_weights.to(device=dev, dtype=torch.float32) if head_weights is not None else q
    ws = _workspace(dev, plan.set_size, plan.stats_numel, plan.pmass_numel)
    parity, ws.parity = ws.parity, 1 - ws.parity
    out = torch.empty(k.shape[1], device=dev, dtype=torch.float32)
    # softmax in base 2: exp(x * scale) = exp2(x * scale * log2(e))
    args = (q, k, qpos, hw, ws.stats, ws.pmass, out, ws.sync, *plan.ints, ws.set_size, parity, scale * LOG2E)
    args += (k.stride(0), k.stride(1))
    if fused:
        _launch_fused(plan, args)
    else:
        _attention_mass[(plan.p1,)](*args, PHASE=1, **plan.meta)
        _attention_mass[(plan.p1,)](*args, PHASE=2, **plan.meta)
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
    grid = (2 * plan.p1,)
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
    fold: int | None,
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
    pairs = hkv * mt
    # Defaults from H100 sweeps of GPU time (benchmarks/kernel_passes.py, benchmarks/kernel_bench.py
    # --sweep): 64-key tiles, one warpgroup, three stages: ~83 KB of shared memory, so two programs
    # share a multiprocessor; folds of 16 ranges.
    block_n = block_n or 64
    num_warps = num_warps or 4
    num_stages = num_stages or 3
    fold = max(2, triton.next_power_of_2(fold or 16))  # a tile dimension: a power of two
    # About two programs per multiprocessor in each pass, over (key ranges x pairs); pass 2 reads the
    # same ranges as pass 1 (backwards), so what pass 1 left in L2 is read first.
    span = split if split is not None else _range(n, triton.cdiv(_programs(q.device), pairs), block_n)
    span = max(block_n, triton.cdiv(span, block_n) * block_n)
    splits = triton.cdiv(n, span)
    groups = triton.cdiv(splits, fold)
    p1 = splits * pairs
    names = ("GROUP", "MT", "PAIRS", "FOLD", "BLOCK_M", "BLOCK_N", "BLOCK_G", "D", "HAS_QPOS", "HAS_W", "IEEE")
    values = (group, mt, pairs, fold, block_m, block_n, max(2, triton.next_power_of_2(groups)), d, has_qpos, has_w)
    consts: tuple[Any, ...] = (*values, q.dtype == torch.float32)
    meta: dict[str, Any] = dict(zip(names, consts, strict=True))
    meta.update(num_warps=num_warps, num_stages=num_stages)
    consts += (0,)  # PHASE: the launcher is only used for the one-launch mode
    ints = (n, w, gw, splits, groups, span, p1)
    stats = (2 * p1 + 2 * pairs * groups) * block_m
    return _Plan(p1, ints, meta, consts, 1 + pairs * groups + splits, stats, pairs * n if pairs > 2 else 0, {})
