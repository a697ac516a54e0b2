"""The CLI end to end on real models: compress, query, demo, and the errors users see."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragctx.cli import app
from ragctx.config import DEFAULT_STAGES
from tests.conftest import need_data

runner = CliRunner()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCTX_INDEX_DIR", str(tmp_path / "index"))
    return tmp_path


def write_requests(path, rows):
    with open(path, "w") as fh:
        for row in rows:
            passages = [{k: p[k] for k in ("id", "title", "text")} for p in row["passages"]]
            fh.write(json.dumps({"question": row["question"], "passages": passages}) + "\n")


def test_compress_writes_one_compressed_context_per_line(env, nq20_rows):
    src, out = env / "in.jsonl", env / "out.jsonl"
    write_requests(src, nq20_rows[:3])
    result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out), "--rate", "0.3", "-m", "truncate"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["question"] for x in lines] == [r["question"] for r in nq20_rows[:3]]
    for line, row in zip(lines, nq20_rows[:3], strict=True):
        assert line["tokens_out"] <= int(0.3 * line["tokens_in"])
        texts = {p["id"]: p["text"] for p in row["passages"]}
        for p in line["passages"]:
            for s in p["spans"]:
                assert texts[p["id"]][s["start"] : s["end"]] == s["text"]
        assert [s["name"] for s in line["stats"]] == ["dedup", "truncate"]


def test_compress_rejects_a_malformed_line_by_number_and_writes_nothing(env, nq20_rows):
    src, out = env / "in.jsonl", env / "out.jsonl"
    write_requests(src, nq20_rows[:2])
    with open(src, "a") as fh:
        fh.write('{"question": "q", "passages": [{"id": "x"}]}\n')
    result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out), "--rate", "0.5"])
    assert result.exit_code == 1
    assert "in.jsonl:3" in result.output and '"text"' in result.output
    assert not out.exists()
    assert not list(env.glob(".out.jsonl*")), "no temporary output may remain"


def test_compress_keeps_an_existing_output_when_the_input_is_bad(env):
    src, out = env / "in.jsonl", env / "out.jsonl"
    out.write_text("previous results\n")
    src.write_text("not json\n")
    result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out)])
    assert result.exit_code == 1 and "in.jsonl:1: invalid JSON" in result.output
    assert out.read_text() == "previous results\n"


def test_build_then_query_gives_a_budgeted_context_with_provenance(env):
    corpus = need_data("nq20/corpus.jsonl.gz")
    # a small corpus: the first 200 passages
    import gzip

    small = env / "corpus.jsonl"
    with gzip.open(corpus, "rt") as src, open(small, "w") as dst:
        for _, line in zip(range(200), src, strict=False):
            dst.write(line)
    assert runner.invoke(app, ["index", "build", str(small)]).exit_code == 0
    result = runner.invoke(app, ["query", "who won the first nobel prize in physics", "--budget", "120", "--json"])
    assert result.exit_code == 0, result.output
    ctx = json.loads(result.stdout)
    assert ctx["tokens_out"] <= 120
    assert ctx["passages"][0]["id"] == "nq0"  # the Nobel laureates passage is retrieved first
    assert "Röntgen" in ctx["context"]
    assert [s["name"] for s in ctx["stats"]] == DEFAULT_STAGES


def test_query_without_an_index_says_how_to_build_one(env):
    result = runner.invoke(app, ["query", "anything"])
    assert result.exit_code == 1
    assert "ragctx index build" in result.output


def test_config_errors_exit_2_and_name_the_key(env, monkeypatch):
    monkeypatch.setenv("RAGCTX_TOP_K", "-3")
    result = runner.invoke(app, ["query", "anything"])
    assert result.exit_code == 2
    assert "RAGCTX_TOP_K" in result.output


def test_bad_budget_and_method_are_usage_errors(env, nq20_rows):
    src, out = env / "in.jsonl", env / "out.jsonl"
    write_requests(src, nq20_rows[:1])
    result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out), "--rate", "2"])
    assert result.exit_code == 2 and "rate" in result.output
    result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out), "-m", "zip", "--rate", "0.5"])
    assert result.exit_code == 2 and "unknown method" in result.output


def test_demo_indexes_the_bundled_corpus_and_answers(env):
    result = runner.invoke(app, ["demo", "--budget", "200"])
    assert result.exit_code == 0, result.output
    assert "Dragon Ball Z" in result.output
    assert "kept spans per passage" in result.output
    assert (env / "index" / "manifest.json").exists()


def test_train_exit_evaluates_on_held_out_hotpotqa_questions(env):
    data = need_data("hotpotqa_train100/hotpotqa_train_100.json").parent.parent
    out = env / "exit-ce"
    args = ["train", "exit", "--out", str(out), "--data", str(data), "--max-examples", "16", "--nq-questions", "5"]
    result = runner.invoke(app, [*args, "--holdout", "2"])
    assert result.exit_code == 0, result.output
    assert "held-out HotpotQA (2 questions" in " ".join(result.output.split())
    summary = json.loads((out / "ragctx_training.json").read_text())
    held_out = summary["held_out_hotpotqa"]
    assert summary["examples"] == 16 and held_out["questions"] == 2 and held_out["sentences"] > 20
    assert 0.0 <= held_out["auc"] <= 1.0


def test_train_exit_refuses_to_hold_out_every_question(env):
    data = need_data("hotpotqa_train100/hotpotqa_train_100.json").parent.parent
    result = runner.invoke(app, ["train", "exit", "--out", str(env / "x"), "--data", str(data), "--holdout", "100"])
    assert result.exit_code == 2
    assert "leaves no HotpotQA question to train on" in " ".join(result.output.split())
    assert not (env / "x").exists()
