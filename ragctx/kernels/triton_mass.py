"""The head-scoring pass as a Triton kernel (CUDA; also runs under TRITON_INTERPRET=1 on the CPU).

Two passes, neither of which writes a W x N score matrix to global memory:
1. `_row_stats`: per query row and range of `split` keys, the running maximum and normaliser of its
   softmax (online softmax over key blocks); the ranges run in parallel and their statistics are
   combined afterwards (Hq x ranges x W numbers).
2. `_key_mass`: per block of keys and per key head, the probabilities of every query row of every query
   head in the group, recomputed from Q.K and the row statistics, weighted per head and summed over rows:
   one fp32 partial per (key head, key). The partials are summed over key heads afterwards (N floats each).
Inputs fp16, bf16 or fp32; accumulation in fp32; head_dim 64 or 128 (any power of two >= 16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_stats(
    Q, K, QPOS, M, L,
    N, W, scale, NUM_SPLITS,
    stride_qh, stride_qw, stride_kh, stride_kn,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    split = tl.program_id(1)
    wb = tl.program_id(2)
    kvh = h // GROUP
    offs_w = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_d = tl.arange(0, D)
    wmask = offs_w < W
    q = tl.load(Q + h * stride_qh + offs_w[:, None] * stride_qw + offs_d[None, :], mask=wmask[:, None], other=0.0)
    qpos = tl.load(QPOS + offs_w, mask=wmask, other=-1)
    m = tl.full([BLOCK_W], float("-inf"), tl.float32)
    s_sum = tl.zeros([BLOCK_W], tl.float32)
    key_start = split * SPLIT
    key_end = tl.minimum(N, key_start + SPLIT)
    for i in range(0, SPLIT // BLOCK_N):
        offs_n = key_start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        k_ptr = K + kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
        k = tl.load(k_ptr, mask=(offs_n < key_end)[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        else:
            s = tl.dot(q, tl.trans(k)) * scale
        valid = (offs_n[None, :] <= qpos[:, None]) & (offs_n[None, :] < key_end)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_sum = s_sum * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        m = m_new
    out = (h * NUM_SPLITS + split) * W + offs_w
    tl.store(M + out, m, mask=wmask)
    tl.store(L + out, s_sum, mask=wmask)


@triton.jit
def _key_mass(
    Q, K, QPOS, M, L, HW, OUT,
    N, W, scale,
    stride_qh, stride_qw, stride_kh, stride_kn,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    nb = tl.program_id(0)
    kvh = tl.program_id(1)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    nmask = offs_n < N
    k = tl.load(K + kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=nmask[:, None], other=0.0)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for g in range(GROUP):
        h = kvh * GROUP + g
        weight = tl.load(HW + h)
        for wstart in range(0, W, BLOCK_W):
            offs_w = wstart + tl.arange(0, BLOCK_W)
            wmask = offs_w < W
            q = tl.load(
                Q + h * stride_qh + offs_w[:, None] * stride_qw + offs_d[None, :], mask=wmask[:, None], other=0.0
            )
            qpos = tl.load(QPOS + offs_w, mask=wmask, other=-1)
            m = tl.load(M + h * W + offs_w, mask=wmask, other=0.0)
            s_sum = tl.load(L + h * W + offs_w, mask=wmask, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            valid = (offs_n[None, :] <= qpos[:, None]) & nmask[None, :] & wmask[:, None] & (s_sum[:, None] > 0)
            denom = tl.where(s_sum > 0, s_sum, 1.0)
            p = tl.where(valid, tl.exp(s - m[:, None]) / denom[:, None], 0.0)
            acc += weight * tl.sum(p, 0)
    tl.store(OUT + kvh * N + offs_n, acc, mask=nmask)


def attention_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor,
    head_weights: torch.Tensor,
    scale: float,
    block_n: int = 64,
    split: int = 4096,
) -> torch.Tensor:
    """Mass per key (N,) in fp32; same contract as the PyTorch path (see attention_mass)."""
    hq, w, d = q.shape
    hkv, n, _ = k.shape
    group = hq // hkv
    q = q.contiguous()
    k = k.to(q.dtype).contiguous()
    block_w = max(16, triton.next_power_of_2(min(w, 64)))
    qpos = q_positions.to(device=q.device, dtype=torch.int32).contiguous()
    weights = head_weights.to(device=q.device, dtype=torch.float32).contiguous()
    splits = triton.cdiv(n, split)
    m_part = torch.empty((hq, splits, w), device=q.device, dtype=torch.float32)
    l_part = torch.empty((hq, splits, w), device=q.device, dtype=torch.float32)
    ieee = q.dtype == torch.float32
    _row_stats[(hq, splits, triton.cdiv(w, block_w))](
        q, k, qpos, m_part, l_part, n, w, scale, splits,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        GROUP=group, BLOCK_W=block_w, BLOCK_N=block_n, D=d, IEEE=ieee, SPLIT=split,
    )  # fmt: skip
    # Combine the splits' partial softmax statistics (Hq x splits x W numbers, not W x N).
    m = m_part.max(dim=1).values
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    sums = (l_part * torch.exp(m_part - m_safe[:, None, :])).sum(dim=1).contiguous()
    m = m.contiguous()
    partial = torch.empty((hkv, n), device=q.device, dtype=torch.float32)
    _key_mass[(triton.cdiv(n, block_n), hkv)](
        q, k, qpos, m, sums, weights, partial, n, w, scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        GROUP=group, BLOCK_W=block_w, BLOCK_N=block_n, D=d, IEEE=ieee,
    )  # fmt: skip
    return partial.sum(dim=0)
