"""The Triton head-scoring kernel against the PyTorch path: under TRITON_INTERPRET=1 on the CPU (small
shapes; CI), and at full size on CUDA. Tolerance: 1e-5 absolute on the mass (fp32 and fp16 inputs;
the reference computes in fp32 from the same rounded inputs). Both launch modes (one launch, two) and
several tilings; on CUDA also the one launch's synchronisation (runs must be bitwise identical: every
sum is taken in a fixed order) and the cached launcher against Triton's JIT dispatch."""

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


TILINGS = [  # (query heads, key heads, W, N, head_dim, keys per program, ranges per fold, block_n)
    (16, 2, 40, 700, 64, 128, 2, 64),  # 320 rows per key head: three row tiles, six pairs summed in order
    (6, 3, 8, 333, 128, 64, 2, 64),  # three key heads; six ranges folded in three groups
    (4, 1, 5, 1000, 64, 64, 4, 64),  # one pair: 16 ranges in four groups, straight into the output
    (2, 2, 3, 257, 64, None, None, 128),  # the heuristics with one key past a block boundary
]


@pytest.mark.parametrize("fused", [True, False])  # one launch (both passes) or two
@pytest.mark.parametrize(("hq", "hkv", "w", "n", "d", "split", "fold", "block_n"), TILINGS)
def test_tilings_and_ranges_agree_with_the_pytorch_path(hq, hkv, w, n, d, split, fold, block_n, fused):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(hq, w, d, generator=g), torch.randn(hkv, n, d, generator=g)
    weights = torch.rand(hq, generator=g)
    for pos in (torch.arange(n - w, n), torch.arange(n // 2, n // 2 + w)):  # end, and causal mid-sequence
        ref, _ = attention_mass(q, k, q_positions=pos, head_weights=weights, use_triton=False)
        out = triton_mass.attention_mass_triton(
            q.to(DEVICE), k.to(DEVICE), pos.to(DEVICE), weights, 1 / math.sqrt(d),
            split=split, fold=fold, block_n=block_n, fused=fused,
        )  # fmt: skip
        assert torch.allclose(out.cpu(), ref, atol=1e-5, rtol=1e-4)


def test_zero_and_negative_head_weights_and_default_arguments():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(4, 6, 64, generator=g), torch.randn(2, 150, 64, generator=g)
    weights = torch.tensor([0.0, -1.5, 2.0, 0.0])
    ref, out, _, _ = both(q, k, head_weights=weights)
    assert torch.allclose(out, ref, atol=1e-5)
    ref, out, _, _ = both(q, k)  # no positions, no weights: the kernel's own defaults
    assert torch.allclose(out, ref, atol=1e-5)


def test_keys_as_a_strided_view_of_a_longer_cache():
    g = torch.Generator().manual_seed(5)
    q, cache = torch.randn(4, 8, 64, generator=g), torch.randn(2, 400, 64, generator=g)
    k = cache[:, :260]  # rows of 64 contiguous, head stride 400 * 64: read in place, no copy
    ref, out, _, _ = both(q, k)
    assert torch.allclose(out, ref, atol=1e-5)


def next_launch_finds_its_counters_at_zero() -> bool:
    # Each launch zeroes the counter set that the next launch on its stream will use.
    sets = [ws.sync.view(2, -1)[ws.parity] for ws in triton_mass._WORKSPACE.values()]
    return all(int(counters.abs().sum()) == 0 for counters in sets)


def test_each_launch_leaves_the_next_one_zeroed_counters():
    q, k = torch.randn(4, 8, 64), torch.randn(2, 500, 64)
    first = triton_mass.attention_mass_triton(q.to(DEVICE), k.to(DEVICE), None, None, 0.125, split=64)
    again = triton_mass.attention_mass_triton(q.to(DEVICE), k.to(DEVICE), None, None, 0.125, split=64)
    assert torch.equal(first, again)
    assert next_launch_finds_its_counters_at_zero()


def test_calls_of_different_shapes_in_turn_share_the_counters_correctly():
    # Plans with more and fewer counters alternate on one stream's workspace; each call must still
    # find its counters at zero (a stale count would release pass 2 early or never).
    g = torch.Generator().manual_seed(6)
    cases = [
        (torch.randn(4, 8, 64, generator=g), torch.randn(2, 900, 64, generator=g), 64),  # 15 ranges
        (torch.randn(6, 4, 64, generator=g), torch.randn(3, 200, 64, generator=g), 128),  # 3 pairs, 2 ranges
    ]
    for q, k, split in cases * 3:
        ref, _ = attention_mass(q, k, use_triton=False)
        out = triton_mass.attention_mass_triton(q.to(DEVICE), k.to(DEVICE), None, None, 0.125, split=split, fold=2)
        assert torch.allclose(out.cpu(), ref, atol=1e-5)
    assert next_launch_finds_its_counters_at_zero()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a race shows only on the GPU")
@pytest.mark.parametrize("n", [4096, 131_072])
def test_one_launch_is_deterministic_and_equals_two_launches_on_the_gpu(n):
    # Each key is summed by one program in a fixed order, so any difference between runs is a race
    # (pass 2 reading partials before pass 1 wrote them).
    q = torch.randn(8, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, n, 128, device="cuda", dtype=torch.bfloat16)
    two = triton_mass.attention_mass_triton(q, k, None, None, 128**-0.5, fused=False)
    runs = [triton_mass.attention_mass_triton(q, k, None, None, 128**-0.5) for _ in range(50)]
    assert all(torch.equal(run, two) for run in runs)
    torch.cuda.synchronize()
    assert next_launch_finds_its_counters_at_zero()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled launcher")
def test_the_cached_launcher_matches_the_jit_dispatch_also_for_misaligned_inputs(monkeypatch):
    q = torch.randn(8, 32, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 5000, 64, device="cuda", dtype=torch.float16)
    flat = torch.randn(q.numel() + 1, device="cuda", dtype=torch.float16)
    q_odd = flat[1:].view_as(q)  # contiguous, but 2 bytes off 16-byte alignment: another specialisation
    q_odd.copy_(q)
    ref, _ = attention_mass(q.float(), k.float(), use_triton=False)
    for qq in (q, q_odd, q, q_odd):  # the second round goes through the cached launchers
        fast = triton_mass.attention_mass_triton(qq, k, None, None, 0.125)
        assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-3)
        monkeypatch.setattr(triton_mass, "FAST_LAUNCH", False)
        assert torch.equal(triton_mass.attention_mass_triton(qq, k, None, None, 0.125), fast)
        monkeypatch.setattr(triton_mass, "FAST_LAUNCH", True)
