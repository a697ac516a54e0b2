"""The one-call Python API and its LLMLingua-compatible form."""

from __future__ import annotations

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
    assert whole["rate"] == 1.0 and whole["compressed_prompt"].strip().endswith("one short context.")
