"""EHPC on real text: evaluator heads, early exit, exact spans, budgets, force-keep."""

from __future__ import annotations

import pytest
import torch

from ragctx.compressors.evaluator_heads import (
    calibrate_heads,
    load_heads,
    needle_examples,
    nq_examples,
    prompt_with_answer_mask,
)
from ragctx.config import load_settings
from ragctx.engine import ContextEngine
from ragctx.pipeline.state import Budget
from ragctx.scoring.lm_attention import HeadSelection, question_attention
from tests.conftest import need_data, passages_of


@pytest.fixture(scope="module")
def heads(registry, settings, nq20_rows):
    essays = need_data("needle_haystack/PaulGrahamEssays")
    examples = needle_examples(essays, 3, context_chars=1500) + nq_examples(nq20_rows[20:24])
    return calibrate_heads(registry.scorer(), settings.resolved_cache_dir(), examples, max_layer=6, top=4)


def test_needle_examples_mark_the_answer_tokens(registry):
    essays = need_data("needle_haystack/PaulGrahamEssays")
    ex = needle_examples(essays, 1, context_chars=1500)[0]
    assert "special magic number" in ex.context
    ids, mask, window = prompt_with_answer_mask(registry.scorer(), ex)
    answer = registry.scorer().tokenizer.decode(ids[0][mask].tolist()).strip()
    assert answer == ex.context[ex.answer_start : ex.answer_end]
    assert window >= 5


def test_calibration_stores_the_best_early_heads(heads, registry, settings):
    assert len(heads.heads) == 4 and all(layer <= 6 for layer, _ in heads.heads)
    assert heads.scores == sorted(heads.scores, reverse=True)
    again = load_heads(settings.resolved_cache_dir(), registry.scorer())
    assert again.heads == heads.heads and again.deepest_layer == max(layer for layer, _ in heads.heads)


def test_early_exit_scores_equal_a_full_forward_truncated_at_that_layer(heads, registry):
    lm = registry.scorer()
    ids = lm.tokenizer(
        "Paris is the capital of France. Rome is in Italy. Question: capital of Italy?", return_tensors="pt"
    )["input_ids"]
    selection = HeadSelection.of_heads(heads.heads)
    early = question_attention(lm, ids, selection, window=4).tokens
    lm.model.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            full = lm.model(ids, output_attentions=True).attentions
    finally:
        lm.model.config._attn_implementation = "sdpa"
    expected = sum(full[layer][0, head, -4:, :].sum(0) for layer, head in heads.heads)
    assert torch.allclose(early, expected, atol=1e-4)


@pytest.mark.parametrize("granularity", ["token", "word", "sentence"])
def test_ehpc_keeps_exact_slices_within_the_budget(heads, engine, nq20_rows, granularity, settings):
    eng = ContextEngine(
        load_settings(index_dir=settings.index_dir, cache_dir=settings.cache_dir, ehpc_granularity=granularity),
        engine.models,
    )
    for row in nq20_rows[:3]:
        sources = {p.id: p for p in passages_of(row)}
        ctx = eng.run(row["question"], list(sources.values()), method="ehpc", budget=Budget(tokens=150))
        assert ctx.tokens_out <= 150
        assert engine.counter.count(ctx.text) == ctx.tokens_out
        for p in ctx.passages:
            for s in p.spans:
                assert s.text_of(p.passage) == sources[p.passage.id].text[s.start : s.end]


def test_force_kept_strings_survive_compression(heads, engine, nq20_rows, settings):
    row = nq20_rows[7]
    needle = row["passages"][13]["text"].split()[3]
    eng = ContextEngine(
        load_settings(
            index_dir=settings.index_dir,
            cache_dir=settings.cache_dir,
            ehpc_granularity="word",
            force_keep_strings=[needle],
        ),
        engine.models,
    )
    ctx = eng.run(row["question"], passages_of(row), method="ehpc", budget=Budget(tokens=120))
    assert needle in ctx.text
    assert ctx.stats[-1].details["forced_units"] >= 1
