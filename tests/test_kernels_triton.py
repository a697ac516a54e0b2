"""The Triton head-scoring kernel against the PyTorch path: under TRITON_INTERPRET=1 on the CPU (small
shapes; CI), and at full size on CUDA. Tolerance: 1e-5 absolute on the mass (fp32 and fp16 inputs;
the reference computes in fp32 from the same rounded inputs)."""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton is imported and the kernels decorated.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install triton; x86_64 Linux)")

from ragctx.kernels.attention_mass import attention_mass  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
triton_mass = importlib.import_module("ragctx.kernels.triton_mass")


def both(q, k, **kw):
    ref, ref_seg = attention_mass(q.float().cpu(), k.float().cpu(), use_triton=False, **kw)
    kw = {key: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    out, out_seg = attention_mass(q.to(DEVICE), k.to(DEVICE), use_triton=True, **kw)
    return ref, out.cpu(), ref_seg, None if out_seg is None else out_seg.cpu()


SHAPES = [  # (query heads, key heads, W, N, head_dim, dtype)
    (8, 2, 16, 300, 64, torch.float32),  # GQA group 4, N not a multiple of the block
    (9, 3, 1, 17, 64, torch.float32),  # one query row (attention sorting), SmolLM2's 9/3 heads
    (4, 4, 32, 129, 128, torch.float16),  # head_dim 128, fp16
    (1, 1, 8, 64, 64, torch.float32),  # one head
    (8, 1, 40, 70, 64, torch.float16),  # group 8, W not a power of two
]


@pytest.mark.parametrize(("hq", "hkv", "w", "n", "d", "dtype"), SHAPES)
def test_kernel_matches_the_pytorch_path(hq, hkv, w, n, d, dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(hq, w, d, generator=g).to(dtype)
    k = torch.randn(hkv, n, d, generator=g).to(dtype)
    weights = torch.rand(hq, generator=g)
    ref, out, _, _ = both(q, k, head_weights=weights)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_fewer_keys_than_query_rows_leaves_rows_before_the_start_empty():
    q, k = torch.randn(2, 12, 64), torch.randn(2, 5, 64)
    ref, out, _, _ = both(q, k)
    assert torch.allclose(out, ref, atol=1e-5)
    assert out.sum().item() == pytest.approx(2 * 5, rel=1e-4)  # only the 5 rows inside the sequence count


def test_segment_sums_with_masked_tokens_and_causal_rows_inside_the_sequence():
    q, k = torch.randn(4, 8, 64), torch.randn(2, 90, 64)
    seg = torch.tensor([-1] * 10 + [0] * 40 + [1] * 30 + [-1] * 10)
    pos = torch.arange(40, 48)  # queries in the middle: keys after each row are invisible
    ref, out, ref_seg, out_seg = both(q, k, q_positions=pos, segment_ids=seg, num_segments=2)
    assert torch.allclose(out, ref, atol=1e-5)
    assert out[48:].abs().max().item() == 0.0
    assert out_seg is not None and torch.allclose(out_seg, ref_seg, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: full-size shapes")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_full_size_on_the_gpu(dtype):
    q = torch.randn(8, 32, 128, device="cuda").to(dtype)
    k = torch.randn(2, 65_536, 128, device="cuda").to(dtype)
    out, _ = attention_mass(q, k, use_triton=True)
    ref, _ = attention_mass(q.float(), k.float(), use_triton=False)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)
    assert out.sum().item() == pytest.approx(8 * 32, rel=1e-3)
    assert math.isfinite(out.max().item())


@pytest.mark.parametrize(("n", "w", "split"), [(300, 8, 64), (1000, 16, 128), (5, 12, 64), (130, 1, 64)])
def test_row_statistics_split_over_key_ranges_combine_exactly(n, w, split):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, w, 64, generator=g), torch.randn(2, n, 64, generator=g)
    pos = torch.arange(n - w, n)
    ref, _ = attention_mass(q, k, q_positions=pos, use_triton=False)
    out = triton_mass.attention_mass_triton(
        q.to(DEVICE), k.to(DEVICE), pos.to(DEVICE), torch.ones(4), 1 / 8, split=split
    )
    assert torch.allclose(out.cpu(), ref, atol=1e-5)
