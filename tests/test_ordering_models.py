"""Model-aware scoring and orders on the embedded SmolLM2: attention sorting, AttnRank, labels, DE."""

from __future__ import annotations

import json

import pytest
import torch

from ragctx.reordering.calibration import (
    attnrank_path,
    calibrate_attnrank,
    edge_ratio,
    load_attnrank,
    sample_prompts,
)
from ragctx.reordering.prompt import slotted_prompt
from ragctx.scoring.abstention import check_abstention
from ragctx.scoring.distraction import DistractionScorer
from ragctx.scoring.prefix_batch import last_token_logits
from ragctx.scoring.relevance import QueryLikelihoodScorer
from ragctx.types import Passage, PassageResult, Span
from tests.conftest import passages_of

QUESTION = "how many episodes are there in dragon ball z"
GOLD = Passage(
    "gold",
    "Dragon Ball Z is a Japanese anime television series produced by Toei Animation. It aired in Japan "
    "on Fuji TV from April 26, 1989 to January 31, 1996, running for 291 episodes.",
    "Dragon Ball Z",
)
UNRELATED = [
    Passage(
        "thames",
        "The Thames is a river that flows through southern England including London.",
        "River Thames",
    ),
    Passage(
        "photo",
        "Photosynthesis is a process used by plants to convert light energy into chemical energy.",
        "Photosynthesis",
    ),
    Passage("nile", "The Nile is a major north-flowing river in northeastern Africa, about 6,650 km long.", "Nile"),
    Passage(
        "jazz",
        "Jazz is a music genre that originated in the African-American communities of New Orleans.",
        "Jazz",
    ),
]


def test_shared_prefix_batching_equals_encoding_each_prompt_alone(exact_registry):
    lm = exact_registry.scorer()
    scorer = DistractionScorer(lm)
    passages = [GOLD, *UNRELATED]
    seqs = [scorer.prompt_ids(QUESTION, p) for p in passages]
    batched = last_token_logits(lm, seqs, batch_size=3).softmax(-1)
    with torch.inference_mode():
        alone = torch.stack([lm.model(torch.tensor([s])).logits[0, -1].float() for s in seqs]).softmax(-1)
    assert torch.allclose(batched, alone, atol=1e-4)


def test_smollm2_fails_the_abstention_check_so_de_is_not_reported_as_a_score(registry, settings):
    lm = registry.scorer()
    check = check_abstention(lm, settings.resolved_cache_dir())
    # SmolLM2-135M answers even from unrelated passages (DE ~ 1), as the reference predicts for tiny models.
    assert not check.follows_abstention and check.mean_de_unrelated > 0.9
    de = DistractionScorer(lm).score(QUESTION, UNRELATED)
    assert all(0.0 <= x <= 1.0 for x in de)


def test_query_likelihood_ranks_the_answer_passage_above_unrelated_ones(registry):
    ql = QueryLikelihoodScorer(registry.scorer()).score(QUESTION, [GOLD, *UNRELATED])
    assert ql[0] > max(ql[1:]) + 1.0


def test_label_stage_labels_every_passage_and_says_why_de_is_missing(engine):
    ctx = engine.run(QUESTION, [*UNRELATED[:2], GOLD, *UNRELATED[2:]], stages=["label"])
    labels = {p.passage.id: p.label for p in ctx.passages}
    assert labels["gold"] == "relevant"
    assert all(labels[p.id] == "irrelevant" for p in UNRELATED)
    assert "does not follow the abstention instruction" in ctx.stats[0].details["distracting_effect"]
    assert all("relevance" in p.scores for p in ctx.passages)


def test_slotted_prompt_marks_exactly_the_passage_bodies(registry):
    lm = registry.scorer()
    results = [PassageResult(p, [Span(p.id, 0, len(p.text))]) for p in [GOLD, *UNRELATED]]
    sp = slotted_prompt(lm, QUESTION, results)
    for slot, p in enumerate([GOLD, *UNRELATED]):
        ids = sp.input_ids[0][sp.slot_ids == slot].tolist()
        assert lm.tokenizer.decode(ids).strip() == p.text


def test_attention_sorting_moves_the_needle_next_to_the_question(engine):
    passages = [GOLD, *UNRELATED]  # the answer-bearing passage starts farthest from the question
    ctx = engine.run(QUESTION, passages, stages=["attention-sort"])
    assert sorted(ctx.order) == sorted(p.id for p in passages)  # a permutation: nothing lost
    assert ctx.order[-1] == "gold"
    scores = {p.passage.id: p.scores["attention"] for p in ctx.passages}
    assert scores["gold"] == max(scores.values())


@pytest.mark.parametrize(
    "stage", ["reorder-lim-langchain", "reorder-lim-llamaindex", "reorder-inverse", "reorder-shuffle"]
)
def test_every_ordering_keeps_every_passage(engine, nq20_rows, stage):
    row = nq20_rows[5]
    ctx = engine.run(row["question"], passages_of(row), stages=[stage])
    assert sorted(ctx.order) == sorted(p["id"] for p in row["passages"])
    assert ctx.tokens_out == ctx.tokens_in


def test_attnrank_profile_is_stored_reused_and_places_the_best_passage_in_the_top_slot(engine, registry, settings):
    lm = registry.reader()
    k = 5
    profile = calibrate_attnrank(lm, settings.resolved_cache_dir(), k, sample_prompts(k, 3))
    path = attnrank_path(settings.resolved_cache_dir(), lm, k)
    stored = json.loads(path.read_text())
    assert stored["position_order"] == profile.position_order
    assert sorted(profile.position_order) == list(range(k))
    assert profile.edge_ratio == pytest.approx(edge_ratio(profile.profile))
    assert load_attnrank(settings.resolved_cache_dir(), lm, k).layer == profile.layer
    ranked = [GOLD, *UNRELATED]  # relevance order: best first
    ctx = engine.run(QUESTION, ranked, stages=["attnrank"])
    assert ctx.order[profile.position_order[0]] == "gold"
    assert sorted(ctx.order) == sorted(p.id for p in ranked)


def test_attnrank_without_a_profile_says_how_to_make_one(engine):
    passages = [Passage(f"p{i}", f"Passage number {i} about nothing.") for i in range(13)]
    with pytest.raises(FileNotFoundError, match="ragctx calibrate attnrank --k 13"):
        engine.run(QUESTION, passages, stages=["attnrank"])


def test_debiased_attention_sorting_subtracts_the_calibrated_slot_bias(engine, registry, settings):
    from ragctx.engine import ContextEngine
    from ragctx.reordering.calibration import calibrate_attention_bias
    from ragctx.settings import load_settings

    lm = registry.reader()
    bias = calibrate_attention_bias(lm, settings.resolved_cache_dir(), 3, sample_prompts(3, 1))
    assert len(bias.bias) == 3 and all(b > 0 for b in bias.bias)
    debiased = ContextEngine(
        load_settings(index_dir=settings.index_dir, cache_dir=settings.cache_dir, attention_sort={"debias": True}),
        registry,
    )
    passages = [UNRELATED[0], GOLD, UNRELATED[1]]
    ctx = debiased.run(QUESTION, passages, stages=["attention-sort"])
    assert sorted(ctx.order) == sorted(p.id for p in passages)
    by_id = {p.passage.id: p.scores for p in ctx.passages}
    for slot, p in enumerate(passages):  # scores were measured in the input order
        assert by_id[p.id]["attention"] == pytest.approx(by_id[p.id]["attention_raw"] - bias.bias[slot])
    with pytest.raises(FileNotFoundError, match="calibrate attention-bias --k 5"):
        debiased.run(QUESTION, [GOLD, *UNRELATED], stages=["attention-sort"])
