"""What a new user gets without choosing anything: the bench's best chain, a default rate, a relevance floor,
one front door, and clear errors for bad values in every interface."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ragctx
from ragctx.bench.harness import best_method
from ragctx.cli import app
from ragctx.compressors.embed_passages import DEFAULT_RELEVANCE_FLOOR
from ragctx.config import DEFAULT_METHOD, DEFAULT_RATE, DEFAULT_STAGES
from ragctx.engine import ContextEngine
from ragctx.settings import load_settings
from ragctx.state import Budget
from ragctx.types import Passage
from tests.conftest import passages_of

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "default-bench" / "bench.json"


def test_the_default_chain_is_the_one_the_dev_bench_table_names():
    bench = json.loads(RESULTS.read_text())
    rows = bench["rows"]
    assert best_method(rows, [0.25, 0.1, 0.05]) == DEFAULT_METHOD
    assert ["retrieve", "dedup", *DEFAULT_METHOD.split("+")] == DEFAULT_STAGES
    # The default rate is the smallest bench rate whose recall is within one point of the whole context's.
    whole = next(r["answer_recall"] for r in rows if r["method"] == "none")
    ours = {r["target_rate"]: r["answer_recall"] for r in rows if r["method"] == DEFAULT_METHOD}
    assert min(rate for rate, recall in ours.items() if recall >= whole - 0.01) == DEFAULT_RATE


def test_the_relevance_floor_is_the_calibrated_one():
    calibrated = json.loads((RESULTS.parents[1] / "relevance_floor.json").read_text())
    assert load_settings().embed_passages.floor == DEFAULT_RELEVANCE_FLOOR == calibrated["floor"]
    assert calibrated["gold_kept"] >= calibrated["keep_gold"]


def test_best_method_needs_every_rate_and_prefers_the_higher_mean():
    rows = [
        {"method": "a", "target_rate": 0.1, "answer_recall": 0.9},
        {"method": "a", "target_rate": 0.05, "answer_recall": 0.5},
        {"method": "b", "target_rate": 0.1, "answer_recall": 0.8},
        {"method": "b", "target_rate": 0.05, "answer_recall": 0.7},
        {"method": "c", "target_rate": 0.1, "answer_recall": 1.0},  # not measured at 0.05
    ]
    assert best_method(rows, [0.1, 0.05]) == "b"


def test_a_fresh_install_compresses_with_the_default_chain_and_the_shipped_heads(settings, registry, nq20_rows):
    """The session's cache is empty (no `ragctx calibrate heads` ran): the bundled heads are used."""
    assert not (settings.resolved_cache_dir() / "calibration" / "heads").exists()
    engine = ContextEngine(settings, registry)
    row = nq20_rows[4]
    ctx = engine.run(row["question"], passages_of(row))
    assert [s.name for s in ctx.stats] == ["dedup", "embed-passages", "ehpc"]
    assert ctx.tokens_out <= int(DEFAULT_RATE * ctx.tokens_in)
    assert ctx.tokens_out > 0.5 * DEFAULT_RATE * ctx.tokens_in


def test_the_callers_passage_order_does_not_change_the_context(engine, nq20_rows):
    row = nq20_rows[5]
    passages = passages_of(row)
    shuffled = passages[:]
    random.Random(3).shuffle(shuffled)
    a = engine.run(row["question"], passages, budget=Budget(rate=0.1))
    b = engine.run(row["question"], shuffled, budget=Budget(rate=0.1))
    assert a.text == b.text
    assert [p.passage.id for p in a.passages if p.spans] == [p.passage.id for p in b.passages if p.spans]


def test_the_relevance_floor_leaves_unrelated_passages_out_even_with_budget_left(engine, nq20_rows):
    """Another question's passages hold nothing for this one: the context is empty and the stats say why."""
    question = nq20_rows[6]["question"]
    unrelated = [
        Passage("u1", "Preheat the oven and whisk two eggs with sugar and flour.", "Sponge cake"),
        Passage("u2", "The match ended in a goalless draw after extra time.", "Football"),
    ]
    ctx = engine.run(question, unrelated, budget=Budget(rate=1.0))
    assert ctx.text == "" and ctx.tokens_out == 0
    prefilter = next(s for s in ctx.stats if s.name == "embed-passages")
    assert "relevance floor" in prefilter.details["reason"]
    assert "relevance floor" in next(s for s in ctx.stats if s.name == "ehpc").details["reason"]
    # Off, the same budget keeps them.
    off = ContextEngine(load_settings(cache_dir=engine.settings.cache_dir, embed_passages={"floor": -1}), engine.models)
    assert off.run(question, unrelated, budget=Budget(rate=1.0)).tokens_out > 0


def test_an_empty_passage_list_gives_an_empty_context_that_says_why(engine):
    ctx = engine.run("who wrote it", [])
    assert ctx.text == "" and ctx.tokens_in == 0 and ctx.tokens_out == 0
    assert all(s.details.get("reason") == "no passages were given" for s in ctx.stats)
    assert ragctx.compress("who wrote it", [], engine=engine).text == ""


def test_the_front_door_takes_strings_dicts_and_passages(engine, nq20_rows):
    row = nq20_rows[7]
    texts = [p["text"] for p in row["passages"]]
    ctx = ragctx.compress(row["question"], texts, rate=0.1, engine=engine)
    assert isinstance(ctx, ragctx.CompressedContext)
    assert 0 < ctx.tokens_out <= int(0.1 * ctx.tokens_in)
    for kept in ctx.passages:
        for span in kept.spans:
            assert kept.passage.text[span.start : span.end] == span.text_of(kept.passage)
    out = ragctx.compress_prompt(context=texts, question=row["question"], rate=0.1, engine=engine)
    assert isinstance(out["origin_tokens"], int) and isinstance(out["compressed_tokens"], int)
    assert isinstance(out["ratio"], float) and isinstance(out["rate"], float) and out["rate"] <= 0.1
    assert {"ContextEngine", "compress", "compress_prompt", "Passage", "CompressedContext", "Settings"} <= set(
        ragctx.__all__
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"rate": 1.5}, "rate 1.5 is outside the allowed range (0, 1]"), ({"target_tokens": 0}, "budget 0")],
)
def test_bad_values_in_python_name_the_value_and_the_range(engine, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ragctx.compress("q", ["text"], engine=engine, **kwargs)
    with pytest.raises(ValueError, match="unknown method 'zip'.*known"):
        ragctx.compress("q", ["text"], method="zip", engine=engine)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rate", "0"], "rate 0.0 is outside the allowed range (0, 1]"),
        (["--budget", "-5"], "budget -5"),
        (["-m", "ehpc+zip"], "unknown method 'ehpc+zip'"),
    ],
)
def test_bad_values_on_the_command_line_exit_2_and_write_nothing(tmp_path, nq20_rows, args, fragment):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    row = nq20_rows[0]
    src.write_text(json.dumps({"question": row["question"], "passages": row["passages"][:2]}) + "\n")
    result = CliRunner().invoke(app, ["compress", "-i", str(src), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split())
    assert not out.exists()
