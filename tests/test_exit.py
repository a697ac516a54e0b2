"""EXIT: the batched shared-prefix path selects what the one-sentence-at-a-time path selects; a trained
classifier loads by path and keeps exact spans."""

from __future__ import annotations

import random

import pytest

from ragctx.compressors.exit import DEFAULT_TAU, ExitLMScorer
from ragctx.compressors.exit_training import (
    evaluate_supporting_facts,
    hotpotqa_examples,
    hotpotqa_passages,
    hotpotqa_rows,
    musique_examples,
    train_exit_classifier,
)
from ragctx.engine import ContextEngine
from ragctx.models import default_embedder_path
from ragctx.segmentation import sentence_offsets
from ragctx.settings import load_settings
from ragctx.state import Budget
from tests.conftest import need_data, passages_of


def test_batched_prefix_path_selects_exactly_what_per_sentence_encoding_selects(exact_registry, nq20_rows):
    scorer = ExitLMScorer(exact_registry.scorer())
    row = nq20_rows[0]
    passage = passages_of(row)[row["gold_index"]]
    sentences = [passage.text[a:b] for a, b in sentence_offsets(passage.text)]
    alone = scorer.score_one_at_a_time(row["question"], passage, sentences)
    from ragctx.compressors.selection import Unit
    from ragctx.state import PipelineState

    state = PipelineState(question=row["question"])
    state.set_passages([passage])
    units = [Unit(0, a, b) for a, b in sentence_offsets(passage.text)]
    batched = scorer.score(state, units)
    assert [x >= DEFAULT_TAU for x in batched] == [x >= DEFAULT_TAU for x in alone]
    assert batched == pytest.approx(alone, abs=1e-4)


def test_exit_without_budget_applies_tau_and_keeps_exact_sentences(engine, nq20_rows):
    row = nq20_rows[1]
    sources = {p.id: p for p in passages_of(row)[:4]}
    ctx = engine.run(row["question"], list(sources.values()), method="exit", budget=Budget())
    assert ctx.stats[-1].details["kept_units"] <= ctx.stats[-1].details["units"]
    for p in ctx.passages:
        for s in p.spans:
            assert s.text_of(p.passage) == sources[p.passage.id].text[s.start : s.end]


def test_training_labels_follow_exit_sampling():
    rng = random.Random(0)
    hot = hotpotqa_examples(hotpotqa_rows(need_data("hotpotqa_train100/hotpotqa_train_100.json")), rng)
    mus = musique_examples(need_data("musique_train100/musique_ans_train_100.json"), rng)
    for examples in (hot, mus):
        positives = sum(e.label == 1.0 for e in examples)
        assert 0.6 <= positives / len(examples) <= 0.75  # two thirds positives, as EXIT samples
    assert any(e.label == 1.0 and "lilu" in e.sentence.lower() for e in hot)  # the first question's fact


def test_a_tiny_training_run_gives_a_classifier_loadable_by_path(tmp_path, registry, settings, nq20_rows):
    rng = random.Random(0)
    examples = hotpotqa_examples(hotpotqa_rows(need_data("hotpotqa_train100/hotpotqa_train_100.json")), rng)[:32]
    out = tmp_path / "exit-ce"
    summary = train_exit_classifier(str(default_embedder_path()), examples, out, batch_size=8)
    assert summary["examples"] == 32 and (out / "config.json").is_file()
    eng = ContextEngine(
        load_settings(index_dir=settings.index_dir, cache_dir=settings.cache_dir, exit={"model": str(out)}), registry
    )
    row = nq20_rows[2]
    sources = {p.id: p for p in passages_of(row)}
    ctx = eng.run(row["question"], list(sources.values()), method="exit", budget=Budget(tokens=200))
    assert ctx.tokens_out <= 200
    for p in ctx.passages:
        for s in p.spans:
            assert s.text_of(p.passage) == sources[p.passage.id].text[s.start : s.end]


def test_hotpotqa_paragraphs_keep_exact_sentence_offsets_and_their_supporting_flags():
    row = hotpotqa_rows(need_data("hotpotqa_train100/hotpotqa_train_100.json"))[0]
    labelled = hotpotqa_passages(row)
    assert [lp.passage.id for lp in labelled] == [t for t, _ in row["context"]]
    flagged = {
        (lp.passage.id, lp.passage.text[a:b])
        for lp in labelled
        for (a, b), f in zip(lp.sentences, lp.supporting, strict=True)
        if f
    }
    expected = {(t, dict(row["context"])[t][int(i)].strip()) for t, i in row["supporting_facts"]}
    assert flagged == expected


class _OracleScorer:
    """Scores 1 for sentences that are supporting facts: precision and recall must come out 1."""

    def __init__(self, rows):
        self.gold = {
            (r["question"], lp.passage.text[a:b])
            for r in rows
            for lp in hotpotqa_passages(r)
            for (a, b), f in zip(lp.sentences, lp.supporting, strict=True)
            if f
        }

    def score(self, state, units):
        text = state.passages[0].passage.text
        return [1.0 if (state.question, text[u.start : u.end]) in self.gold else 0.0 for u in units]


def test_supporting_fact_evaluation_counts_hits_and_misses():
    rows = hotpotqa_rows(need_data("hotpotqa_train100/hotpotqa_train_100.json"))[:3]
    perfect = evaluate_supporting_facts(_OracleScorer(rows), rows, tau=0.5)
    assert (perfect.precision, perfect.recall, perfect.auc, perfect.questions) == (1.0, 1.0, 1.0, 3)
    everything = evaluate_supporting_facts(_OracleScorer(rows), rows, tau=0.0)
    assert everything.recall == 1.0 and everything.kept_fraction == 1.0 and everything.precision < 0.5
