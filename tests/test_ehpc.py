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
from ragctx.engine import ContextEngine
from ragctx.scoring.lm_attention import HeadSelection, question_attention
from ragctx.segmentation import sentence_offsets
from ragctx.settings import load_settings
from ragctx.state import Budget, passage_header
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


def test_early_exit_scores_equal_a_full_forward_truncated_at_that_layer(heads, exact_registry):
    lm = exact_registry.scorer()
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
        load_settings(index_dir=settings.index_dir, cache_dir=settings.cache_dir, ehpc={"granularity": granularity}),
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
            ehpc={"granularity": "word"},
            force_keep_strings=[needle],
        ),
        engine.models,
    )
    ctx = eng.run(row["question"], passages_of(row), method="ehpc", budget=Budget(tokens=120))
    assert needle in ctx.text
    assert ctx.stats[-1].details["forced_units"] >= 1


def _engine(engine, settings, **overrides):
    return ContextEngine(
        load_settings(index_dir=settings.index_dir, cache_dir=settings.cache_dir, **overrides), engine.models
    )


def test_embedding_prefilter_hands_its_cosines_to_ehpc_as_a_passage_prior(heads, exact_engine, nq20_rows, settings):
    engine = exact_engine  # the cosine is compared with a separate encode to float32 rounding
    row = nq20_rows[3]
    ctx = _engine(engine, settings).run(
        row["question"], passages_of(row), method="embed-passages+ehpc", budget=Budget(rate=0.1)
    )
    first_passage = passages_of(row)[0]  # embedded under its title, as the index embeds passages
    vecs = engine.models.embedder().encode(
        [row["question"], f"{first_passage.title}\n{first_passage.text}"],
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    first = next(p for p in ctx.passages if p.passage.id == row["passages"][0]["id"])
    assert first.scores["embedding"] == pytest.approx(float(vecs[1] @ vecs[0]), abs=1e-5)
    assert all("embedding" in p.scores for p in ctx.passages)
    assert ctx.stats[-1].name == "ehpc" and ctx.stats[-1].details["passage_prior"] == "embedding"
    # EHPC alone has no passage scores to lean on: attention only.
    alone = _engine(engine, settings).run(row["question"], passages_of(row), method="ehpc", budget=Budget(rate=0.1))
    assert "passage_prior" not in alone.stats[-1].details


def test_a_dominant_passage_prior_spends_the_budget_on_the_most_relevant_passage_first(
    heads, engine, nq20_rows, settings
):
    # With a prior that outweighs any attention, the best-cosine passage's sentences are chosen first, so
    # it is used and no other passage gets more of the budget; with no prior, attention decides and
    # spreads the budget over more passages (the distractors nearest the question draw attention).
    spread = 0
    for row in nq20_rows[:10]:
        budget = Budget(tokens=100)
        ctx = _engine(engine, settings, ehpc={"passage_prior": 1e4}).run(
            row["question"], passages_of(row), method="embed-passages+ehpc", budget=budget
        )
        candidates = [p for p in ctx.passages if "embedding" in p.scores]
        prefiltered = sorted(candidates, key=lambda p: -p.scores["embedding"])
        used = [p for p in ctx.passages if p.spans]
        best = prefiltered[0]
        kept = {p.passage.id: engine.counter.count(" ".join(s.text_of(p.passage) for s in p.spans)) for p in used}
        if best.passage.id in kept:
            assert kept[best.passage.id] == max(kept.values())
        else:  # only when none of its sentences fits the budget on its own (with its header)
            text = best.passage.text
            smallest = min(engine.counter.count_many([text[a:b] for a, b in sentence_offsets(text)]))
            header = engine.counter.count(passage_header(ctx.passages.index(best) + 1, best.passage))
            assert smallest + header > budget.tokens
        plain = _engine(engine, settings, ehpc={"passage_prior": 0.0}).run(
            row["question"], passages_of(row), method="embed-passages+ehpc", budget=budget
        )
        spread += sum(1 for p in plain.passages if p.spans) > len(used)
    assert spread >= 3


def test_a_sentence_scores_the_sum_or_the_mean_of_its_pooled_token_attention(heads, engine, nq20_rows, settings):
    from ragctx.compressors.selection import make_units
    from ragctx.state import PipelineState

    row = nq20_rows[5]
    state = PipelineState(row["question"])
    state.set_passages(passages_of(row)[:4])
    units = make_units(state, "sentence", engine.counter)
    total = _engine(engine, settings, ehpc={"unit_score": "sum"}).pipeline(method="ehpc").stages[-1].scorer
    mean = _engine(engine, settings, ehpc={"unit_score": "mean"}).pipeline(method="ehpc").stages[-1].scorer
    sums, means = total.attention_scores(state, units), mean.attention_scores(state, units)
    tokens = [s / m for s, m in zip(sums, means, strict=True)]
    # The ratio is the number of scorer tokens the sentence spans: a whole number, about its length.
    assert all(abs(t - round(t)) < 1e-3 for t in tokens)
    lengths = engine.counter.count_many([state.passages[u.passage_index].passage.text[u.start : u.end] for u in units])
    assert all(abs(t - n) <= 2 for t, n in zip(tokens, lengths, strict=True))
    assert max(tokens) > 10


def test_the_passage_prior_keeps_more_answers_on_real_questions(heads, engine, nq20_rows, settings):
    from ragctx.evaluation.metrics import has_answer

    def recall(**overrides) -> int:
        eng = _engine(engine, settings, **overrides)
        return sum(
            has_answer(
                eng.run(r["question"], passages_of(r), method="embed-passages+ehpc", budget=Budget(rate=0.1)).text,
                r["answers"],
            )
            for r in nq20_rows[:12]
        )

    with_prior = recall()
    attention_only = recall(ehpc={"passage_prior": 0.0, "unit_score": "mean"})
    assert with_prior > attention_only
