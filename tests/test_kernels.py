"""The head-scoring pass (PyTorch path) against softmax(QK^T) computed the obvious way."""

from __future__ import annotations

import math

import pytest
import torch

from ragctx.kernels import attention_mass


def naive(q, k, q_positions, head_weights=None):
    hq, w, d = q.shape
    hkv, n, _ = k.shape
    kk = k.repeat_interleave(hq // hkv, dim=0)
    scores = q.float() @ kk.float().transpose(1, 2) / math.sqrt(d)
    mask = torch.arange(n)[None, :] > q_positions[:, None]
    probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).nan_to_num(0.0)
    weights = torch.ones(hq) if head_weights is None else head_weights
    return (probs.sum(dim=1) * weights[:, None]).sum(0)


@pytest.mark.parametrize(
    ("hq", "hkv", "w", "n", "d"),
    [(8, 2, 16, 300, 64), (9, 3, 1, 17, 64), (1, 1, 8, 5, 128), (4, 4, 32, 129, 128)],
)
def test_mass_matches_the_naive_softmax(hq, hkv, w, n, d):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(hq, w, d, generator=g)
    k = torch.randn(hkv, n, d, generator=g)
    pos = torch.arange(n - w, n) if w <= n else torch.arange(n - w, n).clamp(min=-1)
    weights = torch.rand(hq, generator=g)
    mass, _ = attention_mass(q, k, q_positions=pos, head_weights=weights)
    assert torch.allclose(mass, naive(q, k, pos, weights), atol=1e-5)


def test_every_query_row_distributes_one_unit_of_mass():
    q, k = torch.randn(6, 4, 64), torch.randn(3, 50, 64)
    mass, _ = attention_mass(q, k)
    assert mass.sum().item() == pytest.approx(6 * 4, rel=1e-5)


def test_causality_a_query_inside_the_sequence_never_sees_later_keys():
    q, k = torch.randn(2, 1, 64), torch.randn(2, 40, 64)
    mass, _ = attention_mass(q, k, q_positions=torch.tensor([9]))
    assert mass[10:].abs().max().item() == 0.0


def test_segment_sums_come_out_of_the_same_pass_and_masked_tokens_count_for_none():
    q, k = torch.randn(4, 8, 64), torch.randn(2, 30, 64)
    seg = torch.tensor([-1] * 5 + [0] * 10 + [1] * 10 + [-1] * 5)
    mass, per_seg = attention_mass(q, k, segment_ids=seg, num_segments=3)
    assert per_seg is not None
    assert per_seg[0].item() == pytest.approx(mass[5:15].sum().item(), rel=1e-5)
    assert per_seg[1].item() == pytest.approx(mass[15:25].sum().item(), rel=1e-5)
    assert per_seg[2].item() == 0.0


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="head_dim"):
        attention_mass(torch.randn(2, 1, 64), torch.randn(2, 5, 128))
    with pytest.raises(ValueError, match="cannot share"):
        attention_mass(torch.randn(3, 1, 64), torch.randn(2, 5, 64))
