"""`ragctx prune` on real TREC-DL passages: outputs, malformed rows, kill-and-resume, Ray = local.

Every run scores with one torch thread per worker: scores are bit-reproducible only for a fixed thread
count, and the Ray run below uses two one-thread actors.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragctx.cli import app
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.jobs.dedup import band_keys, find_duplicates
from ragctx.jobs.quality import text_signals
from ragctx.models import ModelRegistry
from tests.conftest import need_data

runner = CliRunner()

REAL_PASSAGES = 40
SHARD_SIZE = 8
# Lines after the real passages (1-based line numbers in the corpus file).
BAD_JSON_LINE = REAL_PASSAGES + 1
NO_TEXT_LINE = REAL_PASSAGES + 3
MENU = "Home | News | Sports | Weather | Contact us | Privacy Policy | Sign in | Subscribe"
COMMON = ["--shard-size", str(SHARD_SIZE), "--threads", "1", "--max-tokens", "128", "--no-progress"]
OUTPUTS = ("corpus.jsonl", "report.json", "report.md", "histogram.png")


def write_corpus(path: Path) -> list[dict]:
    """40 BM25 hits of one TREC-DL query, then a malformed line, a copy with one word added, a row
    without text, and a navigation menu."""
    with gzip.open(need_data("trec_dl/dl19_bm25_top100_with_qrels.jsonl.gz"), "rt", encoding="utf-8") as fh:
        first_query = json.loads(fh.readline())
    rows, seen = [], set()
    for hit in first_query["hits"]:
        if hit["docid"] not in seen:
            seen.add(hit["docid"])
            rows.append({"id": hit["docid"], "text": hit["text"]})
        if len(rows) == REAL_PASSAGES:
            break
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.write('{"id": "broken", "text": "no closing brace"\n')
        fh.write(json.dumps({"id": "copy-of-first", "text": rows[0]["text"] + " Thanks."}) + "\n")
        fh.write(json.dumps({"id": "no-text", "title": "empty"}) + "\n")
        fh.write(json.dumps({"id": "menu", "text": MENU}) + "\n")
    return rows


def prune(*args: str) -> None:
    result = runner.invoke(app, ["prune", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "trec.jsonl"
    write_corpus(path)
    return path


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted local run at --keep 0.75."""
    out = tmp_path_factory.mktemp("reference")
    prune(str(corpus), "--out", str(out), *COMMON)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    shards = sorted(p.name for p in (a / "work" / "shards").iterdir())
    assert shards == sorted(p.name for p in (b / "work" / "shards").iterdir())
    for name in shards:
        assert (a / "work" / "shards" / name).read_bytes() == (b / "work" / "shards" / name).read_bytes()


def test_prune_keeps_the_best_fraction_and_reports_every_drop(reference: Path, corpus: Path) -> None:
    report = json.loads((reference / "report.json").read_text())
    kept = read_jsonl(reference / "corpus.jsonl")
    n = REAL_PASSAGES + 2  # the copy and the menu are passages too; the two bad rows are not
    assert report["passages"] == n
    assert len(kept) == report["kept"] == round(0.75 * n)
    # Kept rows are corpus rows with provenance, in corpus order, none below the threshold.
    assert all(r["source"] == str(corpus) and r["quality"] >= report["threshold"] for r in kept)
    assert [r["line"] for r in kept] == sorted(r["line"] for r in kept)
    dropped = {d["id"]: d for d in report["dropped_passages"]}
    assert len(dropped) == n - len(kept)
    assert not set(dropped) & {r["id"] for r in kept}
    assert all(d["reasons"] and isinstance(d["quality"], float) for d in dropped.values())
    first_id = json.loads(corpus.read_text().splitlines()[0])["id"]
    assert dropped["copy-of-first"]["reasons"][0].startswith(f"near-duplicate of {first_id}")
    assert any("boilerplate or navigation" in r for r in dropped["menu"]["reasons"])
    assert min(d["quality"] for d in dropped.values()) == dropped["menu"]["quality"]


def test_report_and_histogram_are_written(reference: Path) -> None:
    assert (reference / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (reference / "report.md").read_text()
    assert "![quality distribution](histogram.png)" in markdown
    assert "`menu`" in markdown and MENU in markdown  # an example of a dropped passage, with its text
    quantiles = json.loads((reference / "report.json").read_text())["quality_quantiles"]
    assert list(quantiles.values()) == sorted(quantiles.values())
    assert not list(reference.glob(".*.tmp*")), "no temporary file may remain"


def test_malformed_rows_are_reported_with_file_and_line(reference: Path, corpus: Path) -> None:
    malformed = json.loads((reference / "report.json").read_text())["malformed"]
    assert malformed["count"] == 2
    rows = malformed["rows"]
    assert [(r["source"], r["line"]) for r in rows] == [(str(corpus), BAD_JSON_LINE), (str(corpus), NO_TEXT_LINE)]
    assert rows[0]["message"].startswith("invalid JSON")
    assert rows[1]["message"] == 'missing "text"'
    assert f"`{corpus}:{BAD_JSON_LINE}`" in (reference / "report.md").read_text()


def test_strict_stops_at_the_first_malformed_row(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(corpus), "--out", str(out), "--strict", *COMMON])
    assert result.exit_code == 1
    assert f"{corpus.name}:{BAD_JSON_LINE}: invalid JSON" in result.output.replace("\n", "")
    assert not (out / "corpus.jsonl").exists()


def test_a_killed_job_resumes_to_exactly_the_uninterrupted_output(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ragctx.cli", "prune", str(corpus), "--out", str(out), *COMMON]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_checkpoint = out / "work" / "shards" / "shard-00000.jsonl"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    _, stderr = job.communicate()
    assert job.returncode == -signal.SIGKILL, f"the job ended before it was killed: {stderr.decode()[-2000:]}"
    finished = list((out / "work" / "shards").glob("shard-*.jsonl"))
    total_shards = -(-(REAL_PASSAGES + 2) // SHARD_SIZE)
    assert 1 <= len(finished) < total_shards
    assert not (out / "corpus.jsonl").exists()

    rerun = runner.invoke(app, ["prune", str(corpus), "--out", str(out), *COMMON])
    assert rerun.exit_code == 1 and "--resume" in rerun.output  # checkpoints are never discarded silently

    prune(str(corpus), "--out", str(out), "--resume", *COMMON)
    assert_same_outputs(reference, out)
    run = json.loads((out / "run.json").read_text())
    assert run["shards_resumed"] == len(finished)
    assert run["passages_scored"] < REAL_PASSAGES + 2
    assert not list((out / "work" / "shards").glob(".*.tmp")), "the killed write's temporary file is gone"


def test_resume_with_another_keep_reselects_without_scoring_and_indexes_what_is_kept(
    reference: Path, corpus: Path, tmp_path: Path, registry: ModelRegistry
) -> None:
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    prune(str(corpus), "--out", str(out), "--resume", "--keep", "0.5", "--index", *COMMON)
    assert json.loads((out / "run.json").read_text())["passages_scored"] == 0
    kept = [r["id"] for r in read_jsonl(out / "corpus.jsonl")]
    assert len(kept) == json.loads((out / "report.json").read_text())["kept"] == round(0.5 * (REAL_PASSAGES + 2))
    index = FaissIndex.open(out / "index", registry.embedder())
    assert len(index) == len(kept)
    assert [p.id for p in index.get(kept)] == kept
    index.close()


def test_warm_cache_puts_the_kept_passages_concept_embeddings_into_redis(
    reference: Path, corpus: Path, tmp_path: Path, registry: ModelRegistry, redis_server, monkeypatch
) -> None:
    from ragctx.engine import ContextEngine
    from ragctx.settings import load_settings
    from ragctx.types import Passage

    out = tmp_path / "warm"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    refused = runner.invoke(app, ["prune", str(corpus), "--out", str(out), "--resume", "--warm-cache", *COMMON])
    assert refused.exit_code == 2 and "RAGCTX_REDIS_URL" in refused.output
    monkeypatch.setenv("RAGCTX_REDIS_URL", redis_server.url)
    prune(str(corpus), "--out", str(out), "--resume", "--warm-cache", *COMMON)
    kept = [Passage(id=r["id"], text=r["text"], title=r["title"]) for r in read_jsonl(out / "corpus.jsonl")]
    reader = ContextEngine(load_settings(redis_url=redis_server.url), registry).compressed_reader
    prompt = reader.soft_prompt("what is it about?", kept[:5])
    assert prompt.segments > 0 and prompt.cache_hits == prompt.segments


def test_resume_refuses_checkpoints_scored_with_other_settings(reference: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    args = ["prune", str(corpus), "--out", str(out), "--resume", *COMMON, "--batch-size", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "cannot resume: scoring changed" in result.output.replace("\n", "")


def test_ray_engine_writes_exactly_what_the_local_engine_writes(reference: Path, corpus: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray"
    try:
        prune(str(corpus), "--out", str(out), "--engine", "ray", "--workers", "2", *COMMON)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    assert_same_outputs(reference, out)
    assert json.loads((out / "run.json").read_text())["engine"] == "ray"


def test_near_duplicates_are_found_across_the_corpus_and_the_best_is_kept() -> None:
    a = "The flea life cycle has four stages: egg, larva, pupa and adult, and takes two weeks to a year."
    b = a + " Thanks for reading."
    c = "Cat fleas are the most common fleas on dogs and cats in most of the world, and they bite humans."
    texts = [a, c, b]
    found = find_duplicates(
        [band_keys(t) for t in texts], [-1.0, -0.5, -0.2], lambda ids: {i: texts[i] for i in ids}, 0.8
    )
    assert [(d.index, d.of) for d in found] == [(0, 2)]  # the copy scored higher, so the original goes
    assert band_keys(a) == band_keys(a) and len(band_keys(a)) == 16


def test_text_signals_flag_menus_short_text_and_mojibake() -> None:
    prose = text_signals("A flea can live up to a year, but its lifespan depends on its living conditions and hosts.")
    assert (prose.short, prose.boilerplate, prose.noise) == (0.0, 0.0, 0.0)
    assert text_signals(MENU).boilerplate == 1.0
    assert text_signals("Click here").short > 0.8
    assert text_signals("Itâ€™s the #1 choice of vets â€” FRONTLINE Â® Plus.").noise > 0.25
