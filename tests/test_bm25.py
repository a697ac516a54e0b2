"""`bm25`: lexical relevance without a model, through the shared selection."""

from __future__ import annotations

import pytest

from ragctx.compressors.bm25 import BM25Scorer, terms
from ragctx.compressors.selection import make_units
from ragctx.evaluation.metrics import has_answer
from ragctx.state import Budget, PipelineState
from ragctx.types import Passage
from tests.conftest import passages_of


def test_terms_drop_function_words_and_case():
    assert terms("Who wrote The Raven?") == ["wrote", "raven"]


def test_a_sentence_sharing_rare_question_words_outscores_one_sharing_none(engine):
    passages = [
        Passage("a", "The raven is a large black bird. It lives in the north."),
        Passage("b", "Edgar Allan Poe wrote the poem The Raven in 1845."),
    ]
    state = PipelineState(question="who wrote the raven poem", budget=Budget())
    state.set_passages(passages)
    units = make_units(state, "sentence", engine.counter)
    scores = BM25Scorer().score(state, units)
    best = units[max(range(len(units)), key=scores.__getitem__)]
    assert (best.passage_index, best.start) == (1, 0)
    assert scores[1] == 0.0  # "It lives in the north." shares no word with the question
    assert state.passages[1].scores["bm25"] == max(scores)


def test_settings_reach_the_scorer(engine):
    pipeline = engine.pipeline(method="bm25")
    assert pipeline.stages[-1].scorer.granularity == "sentence"
    from ragctx.engine import ContextEngine
    from ragctx.settings import load_settings

    custom = load_settings(cache_dir=engine.settings.cache_dir, bm25={"granularity": "passage", "k1": 2})
    other = ContextEngine(custom, engine.models)
    scorer = other.pipeline(method="bm25").stages[-1].scorer
    assert (scorer.granularity, scorer.k1) == ("passage", 2.0)


@pytest.mark.slow
def test_bm25_keeps_the_answer_far_more_often_than_truncation_within_the_budget(engine, nq20_rows):
    rows = nq20_rows[:20]
    kept = {}
    for method in ("bm25", "truncate"):
        hits = 0
        for r in rows:
            ctx = engine.run(r["question"], passages_of(r), method=method, budget=Budget(rate=0.1))
            assert ctx.tokens_out <= 0.1 * ctx.tokens_in
            hits += has_answer(ctx.text, r["answers"])
        kept[method] = hits
    assert kept["bm25"] >= kept["truncate"] + 5, kept
