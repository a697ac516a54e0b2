"""Nsight Compute profile of the head-scoring kernel (issue 5): what bounds it at 16k and 128k keys.

Run on a CUDA machine with `ncu`:
  ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section WarpStateStats -k regex:attention_mass --launch-skip 2 --launch-count 4 \
      python benchmarks/kernel_profile.py
Shapes as in kernel_bench.py: W = 32, 8 query heads over 2 key heads, head_dim 128, bf16. Two launches
per N warm up (compilation, plan cache); the next two of each N are the profiled ones (fused and two-launch
modes are separate kernels' launches).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.kernels.triton_mass import attention_mass_triton  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    for n in (131072, 16384):
        q = torch.randn(8, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(2, n, 128, device="cuda", dtype=torch.bfloat16)
        for _ in range(4):
            attention_mass_triton(q, k, None, None, 1 / math.sqrt(128))
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
