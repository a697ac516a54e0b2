"""Attention mass per key position, from the queries of the last W positions through selected heads.

This is the PyTorch path (CPU and reference). It never holds more than one head's W x N score matrix:
heads are processed one at a time, so memory stays O(W * N) whatever the number of heads.
"""

from __future__ import annotations

import math

import torch


def attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    q_positions: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of each query row over all keys, summed over rows and (weighted) heads.

    q: (Hq, W, d) queries with RoPE applied; k: (Hkv, N, d) keys with RoPE applied; Hq is a multiple of
    Hkv (grouped-query attention: query head h reads key head h // (Hq // Hkv)). `q_positions` (W,) are
    the queries' absolute positions: a query at position p sees keys 0..p (causal); by default the
    queries are the last W positions of the sequence. Returns the mass per key (N,) in fp32 and, when
    `segment_ids` (N,) is given, the mass per segment (num_segments,); ids < 0 belong to no segment.
    """
    hq, w, d = q.shape
    hkv, n, dk = k.shape
    if dk != d:
        raise ValueError(f"head_dim differs: q {d}, k {dk}")
    if hq % hkv:
        raise ValueError(f"{hq} query heads cannot share {hkv} key heads")
    group = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    if q_positions is None:
        q_positions = torch.arange(n - w, n, device=q.device)
    keys_pos = torch.arange(n, device=q.device)
    # Row i may look at key j iff j <= position(i); queries before the sequence start see nothing.
    visible = keys_pos[None, :] <= q_positions[:, None]
    mass = torch.zeros(n, dtype=torch.float32, device=q.device)
    for h in range(hq):
        weight = 1.0 if head_weights is None else float(head_weights[h])
        if weight == 0.0:
            continue
        scores = (q[h].float() @ k[h // group].float().T) * scale
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key give 0
        mass += weight * probs.sum(dim=0)
    seg = None
    if segment_ids is not None:
        count = num_segments if num_segments is not None else int(segment_ids.max().item()) + 1
        seg = torch.zeros(max(count, 0), dtype=torch.float32, device=q.device)
        valid = segment_ids >= 0
        seg.index_add_(0, segment_ids[valid].long(), mass[valid])
    return mass, seg
