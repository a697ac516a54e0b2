"""Attention mass per key position, from the queries of the last W positions through selected heads.

This is the PyTorch path (CPU and reference). It never holds more than one head's W x N score matrix:
heads are processed one at a time, so memory stays O(W * N) whatever the number of heads.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

log = logging.getLogger(__name__)


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _log_path_once(path: str) -> None:
    log.info("head-scoring pass: %s", path)


def attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    q_positions: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
    scale: float | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of each query row over all keys, summed over rows and (weighted) heads.

    q: (Hq, W, d) queries with RoPE applied; k: (Hkv, N, d) keys with RoPE applied; Hq is a multiple of
    Hkv (grouped-query attention: query head h reads key head h // (Hq // Hkv)). `q_positions` (W,) are
    the queries' absolute positions: a query at position p sees keys 0..p (causal); by default the
    queries are the last W positions of the sequence. Returns the mass per key (N,) in fp32 and, when
    `segment_ids` (N,) is given, the mass per segment (num_segments,); ids < 0 belong to no segment.

    On CUDA (with Triton installed) the Triton kernel runs; elsewhere this PyTorch path. `use_triton`
    forces one or the other (True on the CPU needs TRITON_INTERPRET=1).
    """
    hq, w, d = q.shape
    hkv, n, dk = k.shape
    if dk != d:
        raise ValueError(f"head_dim differs: q {d}, k {dk}")
    if hq % hkv:
        raise ValueError(f"{hq} query heads cannot share {hkv} key heads")
    group = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    triton_path = use_triton if use_triton is not None else (q.is_cuda and _triton_available())
    if triton_path:
        from ragctx.kernels.triton_mass import attention_mass_triton

        _log_path_once("Triton kernel")
        # None passes through: the kernel derives default positions and unit weights itself, which
        # saves an arange and a host-to-device copy per call (launch overhead dominates at small N).
        mass = attention_mass_triton(q, k, q_positions, head_weights, scale)
    else:
        _log_path_once("PyTorch path")
        if q_positions is None:
            q_positions = torch.arange(n - w, n, device=q.device)
        mass = _mass_torch(q, k, q_positions, head_weights, scale, group)
    seg = None
    if segment_ids is not None:
        segment_ids = segment_ids.to(mass.device)
        count = num_segments if num_segments is not None else int(segment_ids.max().item()) + 1
        seg = torch.zeros(max(count, 0), dtype=torch.float32, device=q.device)
        valid = segment_ids >= 0
        seg.index_add_(0, segment_ids[valid].long(), mass[valid])
    return mass, seg


def _mass_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor,
    head_weights: torch.Tensor | None,
    scale: float,
    group: int,
) -> torch.Tensor:
    n = k.shape[1]
    keys_pos = torch.arange(n, device=q.device)
    # Row i may look at key j iff j <= position(i); queries before the sequence start see nothing.
    visible = keys_pos[None, :] <= q_positions.to(q.device)[:, None]
    mass = torch.zeros(n, dtype=torch.float32, device=q.device)
    for h in range(q.shape[0]):
        weight = 1.0 if head_weights is None else float(head_weights[h])
        if weight == 0.0:
            continue
        scores = (q[h].float() @ k[h // group].float().T) * scale
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key give 0
        mass += weight * probs.sum(dim=0)
    return mass
