"""The one-call Python API and its LLMLingua-compatible form."""

from __future__ import annotations

import re

import pytest

from ragctx.frontdoor import compress, compress_prompt
from tests.conftest import passages_of


def test_compress_accepts_strings_dicts_and_passages_and_keeps_provenance(engine, nq20_rows):
    row = nq20_rows[0]
    passages = passages_of(row)
    mixed = [passages[0].text, {"id": passages[1].id, "text": passages[1].text, "title": "T"}, *passages[2:]]
    # `budget` keeps sentences in the order given, so the first two inputs are the first two kept passages.
    ctx = compress(row["question"], mixed, target_tokens=150, method="budget", engine=engine)
    assert ctx.tokens_out <= 150
    assert ctx.passages[0].passage.id == "0"
    assert ctx.passages[1].passage.id == passages[1].id


def test_threshold_first_then_budget_caps(engine, nq20_rows):
    row = nq20_rows[1]
    loose = compress(row["question"], passages_of(row), threshold=-3.0, method="budget", engine=engine)
    capped = compress(
        row["question"], passages_of(row), threshold=-3.0, target_tokens=60, method="budget", engine=engine
    )
    assert loose.tokens_out > 60 >= capped.tokens_out
    assert sum(len(p.spans) for p in loose.passages) <= 4  # budget scores sentences -0, -1, -2, -3


def test_compress_prompt_returns_llmlingua_keys_with_numbers(engine, nq20_rows):
    row = nq20_rows[2]
    out = compress_prompt([p.text for p in passages_of(row)], question=row["question"], rate=0.25, engine=engine)
    assert set(out) >= {"compressed_prompt", "origin_tokens", "compressed_tokens", "ratio", "rate"}
    assert isinstance(out["origin_tokens"], int) and isinstance(out["ratio"], float)
    assert out["compressed_tokens"] <= 0.25 * out["origin_tokens"]
    assert out["ratio"] == out["origin_tokens"] / out["compressed_tokens"]
    # target_token=-1 is LLMLingua's "no token target": the rate alone decides.
    whole = compress_prompt(
        "one short context.", question="q", target_token=-1, rate=1.0, method="budget", engine=engine
    )
    assert whole["rate"] == 1.0 and whole["compressed_prompt"] == "Document [1] one short context.\n\nq"


def test_compress_prompt_takes_llmlinguas_positional_arguments_and_assembles_its_prompt(engine, nq20_rows):
    row = nq20_rows[3]
    texts = [p.text for p in passages_of(row)]
    instruction = "Answer the question from the documents."
    question = f"Question: {row['question']}"
    # LLMLingua's order: (context, instruction, question, rate, target_token)
    out = compress_prompt(texts, instruction, question, 0.25, -1, engine=engine)
    kept = out["ragctx"]["context"]
    assert out["compressed_prompt"] == f"{instruction}\n\n{kept}\n\n{question}"
    counted = engine.counter.count
    assert out["origin_tokens"] == out["ragctx"]["tokens_in"] + counted(instruction) + counted(question)
    assert out["compressed_tokens"] == out["ragctx"]["tokens_out"] + counted(instruction) + counted(question)
    without = compress_prompt(texts, instruction, question, 0.25, concate_question=False, engine=engine)
    assert without["compressed_prompt"] == f"{instruction}\n\n{without['ragctx']['context']}"
    assert out["compressed_tokens"] <= 0.25 * out["origin_tokens"]  # the rate is of the whole prompt, as LLMLingua's
    # LongLLMLingua's common keywords: mapped where ragctx has an equivalent ...
    mapped = compress_prompt(
        texts,
        instruction,
        question,
        0.25,
        condition_in_question="after_condition",
        reorder_context="sort",
        dynamic_context_compression_ratio=0.0,
        rank_method="bm25",
        engine=engine,
    )
    assert [s["name"] for s in mapped["ragctx"]["stats"]][-1] == "bm25"
    tokens = compress_prompt(texts, instruction, question, target_token=40, engine=engine)
    assert tokens["ragctx"]["tokens_out"] <= 40


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"dynamic_context_compression_ratio": 0.3}, "leave it 0"),
        ({"reorder_context": "two_stage"}, "no ragctx equivalent"),
        ({"reorder_context": "original"}, "method='budget' to keep the order"),
        ({"rank_method": "openai"}, "not available offline"),
        ({"condition_in_question": "sideways"}, "expected one of"),
        ({"iterative_size": 200}, "one pass"),
        ({"rate": 1.5}, "rate 1.5 is outside the allowed range (0, 1]"),
        ({"force_tokens": ["\n"]}, "never removes single tokens"),
    ],
)
def test_llmlingua_keywords_without_an_equivalent_are_refused_saying_what_to_use(engine, kwargs, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        compress_prompt(["some context."], "", "q", engine=engine, **kwargs)


def test_an_unknown_keyword_is_a_type_error_not_ignored(engine):
    with pytest.raises(TypeError, match="unexpected keyword argument 'ratee'"):
        compress_prompt(["some context."], question="q", ratee=0.3, engine=engine)
