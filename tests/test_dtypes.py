"""The models' dtype: bf16 where the CPU computes it (the `auto` default), float32 elsewhere or when asked,
with the same decisions as float32 on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import passages_of

from ragctx.models import ModelRegistry, cpu_computes_bf16, lm_dtype
from ragctx.scoring.distraction import DistractionScorer


def test_auto_is_bf16_on_a_gpu_or_a_cpu_with_bf16_instructions_and_float32_otherwise():
    assert lm_dtype("cuda") == torch.bfloat16
    assert lm_dtype("cpu") == (torch.bfloat16 if cpu_computes_bf16() else torch.float32)
    assert lm_dtype("cpu", "float32") == torch.float32 and lm_dtype("cuda", "float32") == torch.float32
    assert lm_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="float16.*known: auto, float32, bfloat16"):
        lm_dtype("cpu", "float16")


def test_the_registry_loads_the_dtype_its_settings_name(registry: ModelRegistry, exact_registry: ModelRegistry):
    assert registry.scorer().model.dtype == lm_dtype("cpu")
    assert exact_registry.scorer().model.dtype == torch.float32
    # bf16 inference stays fast only on weights that require grad (see ragctx.adapters.frozen)
    assert all(p.requires_grad for p in registry.scorer().model.parameters())


def test_bf16_models_score_real_passages_as_float32_ones_do(registry, exact_registry, nq20_rows):
    bf16 = ModelRegistry(registry.settings.model_copy(update={"lm_dtype": "bfloat16", "embedder_backend": "bfloat16"}))
    row = nq20_rows[0]
    passages = passages_of(row)[:6]
    a = DistractionScorer(bf16.scorer()).score(row["question"], passages)
    b = DistractionScorer(exact_registry.scorer()).score(row["question"], passages)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-2
    texts = [row["question"], *(f"{p.title}\n{p.text}" for p in passages)]
    ea = bf16.embedder().encode(texts, normalize_embeddings=True)
    eb = exact_registry.embedder().encode(texts, normalize_embeddings=True)
    cos_a, cos_b = ea[1:] @ ea[0], eb[1:] @ eb[0]
    assert np.abs(cos_a - cos_b).max() < 1e-2
    assert list(np.argsort(-cos_a)[:3]) == list(np.argsort(-cos_b)[:3])  # the same passages ranked first
