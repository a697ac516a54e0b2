"""Fault injection against a real service on loopback: concurrency on the shared models, hostile cache
entries, Redis refusing work, huge passages. Every test asserts zero failed requests (fallbacks counted)
or byte-identical output; loops are bounded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from ragctx.api import create_app
from ragctx.cache.codec import decode
from ragctx.cli import app
from ragctx.engine import ContextEngine
from ragctx.segmentation import sentence_offsets
from ragctx.settings import load_settings
from ragctx.state import Budget
from ragctx.types import Passage
from tests.conftest import RedisServer, passages_of
from tests.test_api import running

CONCURRENCY = 32

# What each model-using method is asked: (route, body without question and passages).
CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "ehpc": ("/v1/compress", {"method": "ehpc", "rate": 0.3}),
    "attention-sort": ("/v1/compress", {"method": "none", "stages": ["attention-sort"]}),
    "label": ("/v1/compress", {"method": "none", "stages": ["label"]}),
    "exit": ("/v1/compress", {"method": "exit", "rate": 0.3}),
    "compllm": ("/v1/chat/completions", {"ragctx": {"method": "compllm"}, "max_tokens": 6}),
}


def _body(call: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    passages = [{"id": p.id, "title": p.title, "text": p.text} for p in passages_of(row)[:3]]
    if "ragctx" in call:
        return {
            "messages": [{"role": "user", "content": row["question"]}],
            "max_tokens": call["max_tokens"],
            "ragctx": {**call["ragctx"], "passages": passages},
        }
    return {**call, "question": row["question"], "passages": passages}


def _outcome(response: httpx.Response) -> Any:
    """What must not depend on concurrency: the kept spans and text, or the answer (timings aside)."""
    assert response.status_code == 200, response.text
    body = response.json()
    if "choices" in body:
        return body["choices"][0]["message"]["content"]
    passages = [(p["id"], [(s["start"], s["end"]) for s in p["spans"]], p.get("label")) for p in body["passages"]]
    return body["context"], passages


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory) -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt install redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def service_url(settings, registry, module_redis):
    # Through Redis, as deployed (CompLLM concept embeddings are cached there).
    configured = load_settings(
        cache_dir=settings.cache_dir,
        index_dir=settings.index_dir,
        max_concurrency=CONCURRENCY,
        request_timeout_s=600,
        redis_url=module_redis.url,
    )
    with running(create_app(configured, registry)) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CALLS))
def test_concurrent_requests_on_the_shared_model_all_succeed_with_the_sequential_outputs(
    method, service_url, nq20_rows
):
    route, call = CALLS[method]
    rows = nq20_rows[:4]
    with httpx.Client(base_url=service_url, timeout=600) as http:
        alone = [_outcome(http.post(route, json=_body(call, r))) for r in rows]
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(http.post, route, json=_body(call, rows[i % len(rows)])) for i in range(CONCURRENCY)]
            responses = [f.result() for f in futures]
    failed = [r.status_code for r in responses if r.status_code != 200]
    assert failed == [], f"{len(failed)} of {CONCURRENCY} concurrent {method} requests failed: {failed[:5]}"
    for i, response in enumerate(responses):
        assert _outcome(response) == alone[i % len(rows)], f"concurrent {method} request {i} differs from sequential"


@pytest.mark.slow
def test_cached_segments_under_concurrency_equal_a_cold_sequential_run(service_url, nq20_rows, settings, registry):
    """segment_kv on: 32 concurrent EHPC requests encode and read the same segments at once."""
    rows = nq20_rows[4:8]
    engine = ContextEngine(load_settings(cache_dir=settings.cache_dir, segment_kv=True), registry)
    want = [engine.run(r["question"], passages_of(r)[:3], method="ehpc", budget=Budget(rate=0.3)).text for r in rows]
    fresh = ContextEngine(load_settings(cache_dir=settings.cache_dir, segment_kv=True), registry)  # cold cache

    def one(i: int) -> str:
        r = rows[i % len(rows)]
        return fresh.run(r["question"], passages_of(r)[:3], method="ehpc", budget=Budget(rate=0.3)).text

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        got = list(pool.map(one, range(CONCURRENCY)))
    assert got == [want[i % len(rows)] for i in range(CONCURRENCY)]


# ---- cache entries that cannot hurt -------------------------------------------------------------------


def _reheadered(blob: bytes, variant: str) -> bytes:
    """`blob` (a valid entry) with a malformed header that still carries a valid checksum: what a bug or
    another version of ragctx could write. The checksum alone cannot catch these."""
    (hlen,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[40 : 40 + hlen])
    payload = blob[40 + hlen :]
    if variant == "list":
        new: Any = [header]
    elif variant == "dtype":
        new = {**header, "tensors": [{**t, "dtype": "float99"} for t in header["tensors"]]}
    elif variant == "no tensors":
        new = {k: v for k, v in header.items() if k != "tensors"}
    else:  # "string shape"
        new = {**header, "tensors": [{**t, "shape": "x".join(map(str, t["shape"]))} for t in header["tensors"]]}
    raw = json.dumps(new).encode()
    return blob[:4] + struct.pack("<I", len(raw)) + hashlib.sha256(raw + payload).digest() + raw + payload


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["list", "dtype", "no tensors", "string shape"])
def test_a_malformed_cache_entry_is_dropped_and_recomputed_not_served_as_an_error(
    variant, redis_server, settings, registry, nq20_rows
):
    engine = ContextEngine(
        load_settings(cache_dir=settings.cache_dir, segment_kv=True, redis_url=redis_server.url), registry
    )
    row = nq20_rows[8]
    passages = passages_of(row)[:3]
    want = engine.run(row["question"], passages, method="ehpc", budget=Budget(rate=0.3)).text
    client = redis.Redis.from_url(redis_server.url)
    keys = list(client.scan_iter("ragctx:seg:*"))
    assert keys
    for key in keys:
        client.set(key, _reheadered(client.get(key), variant))
    before = engine.segment_cache.stats.corrupt
    for _ in range(2):  # the second run reads the recomputed entries
        assert engine.run(row["question"], passages, method="ehpc", budget=Budget(rate=0.3)).text == want
    assert engine.segment_cache.stats.corrupt - before == len(keys)  # each counted once, then replaced
    for key in client.scan_iter("ragctx:seg:*"):
        decode(client.get(key), *_kind_owner(client.get(key)))  # every entry is intact again


def _kind_owner(blob: bytes) -> tuple[str, str]:
    (hlen,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[40 : 40 + hlen])
    return header["kind"], header["owner"]


@pytest.mark.slow
def test_redis_refusing_writes_out_of_memory_fails_no_request(settings, registry, nq20_rows, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.set("ballast", b"x" * 2_000_000)
        client.config_set("maxmemory", "1mb")  # now every write is refused with OOM
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", b"y")
        engine = ContextEngine(
            load_settings(cache_dir=settings.cache_dir, segment_kv=True, redis_url=server.url), registry
        )
        plain = ContextEngine(load_settings(cache_dir=settings.cache_dir, segment_kv=True), registry)
        for row in nq20_rows[9:11]:
            passages = passages_of(row)[:3]
            got = engine.run(row["question"], passages, method="ehpc", budget=Budget(rate=0.3)).text
            assert got == plain.run(row["question"], passages, method="ehpc", budget=Budget(rate=0.3)).text
        assert engine.segment_cache.stats.fallbacks >= 1
    finally:
        server.kill()


# ---- bounded work per request -------------------------------------------------------------------------


def test_a_passage_over_the_size_limit_is_refused_at_once_everywhere(service_url, settings, registry, tmp_path):
    huge = "All work and no play makes Jack a dull boy. " * 45_000  # about 2 MB
    with httpx.Client(base_url=service_url, timeout=60) as http:
        t0 = time.monotonic()
        response = http.post(
            "/v1/compress", json={"question": "who?", "passages": [{"id": "a", "text": huge[:1_900_000]}]}
        )
        assert time.monotonic() - t0 < 5
    assert response.status_code == 422
    assert "max_passage_chars" in response.json()["error"]["message"]
    with pytest.raises(ValueError, match="max_passage_chars"):
        ContextEngine(settings, registry).run("who?", [Passage("a", huge)], method="budget")
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"question": "q", "passages": [{"id": "ok", "text": "fine."}]})
        + "\n"
        + json.dumps({"question": "q", "passages": [{"id": "big", "text": huge}]})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["compress", "-i", str(src), "-o", str(out), "-m", "budget"])
    assert result.exit_code == 1 and f"{src}:2: passages[0] has" in result.output and not out.exists()


def test_sentence_splitting_is_linear_on_text_that_makes_pysbd_quadratic():
    for text in ("a. " * 700_000, "Mr. X went. " * 170_000, "x" * 2_000_000):
        t0 = time.monotonic()
        spans = sentence_offsets(text)
        assert time.monotonic() - t0 < 5, text[:20]
        assert all(text[a:b] == text[a:b].strip() and b > a for a, b in spans)


@pytest.mark.slow
def test_a_request_past_its_time_limit_stops_its_work_and_frees_its_worker(settings, registry, nq20_rows):
    """Many passages through EHPC's chunks: the 504 comes at the limit, and the worker stops at its next
    chunk, so the service is idle again soon after and a small request is served."""
    configured = load_settings(
        cache_dir=settings.cache_dir, max_concurrency=1, request_timeout_s=3, queue_wait_s=0, ehpc={"chunk_tokens": 256}
    )
    service_app = create_app(configured, registry)
    everything = [(r["qid"], p) for r in nq20_rows for p in r["passages"]]
    passages = [{"id": f"{q}-{p['id']}", "title": p["title"], "text": p["text"]} for q, p in everything][:150]
    with running(service_app) as url, httpx.Client(base_url=url, timeout=120) as http:
        t0 = time.monotonic()
        slow = http.post("/v1/compress", json={"question": "who?", "passages": passages, "method": "ehpc", "rate": 0.5})
        assert slow.status_code == 504 and time.monotonic() - t0 < 10
        limiter = service_app.state.service.limiter
        deadline = time.monotonic() + 15
        while limiter.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert limiter.active == 0, "the timed-out request's worker kept running"
        small = http.post("/v1/compress", json={"question": "who?", "passages": passages[:2], "method": "budget"})
        assert small.status_code == 200


def test_a_full_service_queues_a_request_briefly_before_refusing_it(settings, registry, nq20_rows):
    configured = load_settings(cache_dir=settings.cache_dir, max_concurrency=1, queue_wait_s=30)
    passages = [{"id": p.id, "title": p.title, "text": p.text} for p in passages_of(nq20_rows[0])]
    body = {"question": nq20_rows[0]["question"], "passages": passages, "method": "ehpc", "rate": 0.2}
    with (
        running(create_app(configured, registry)) as url,
        httpx.Client(base_url=url, timeout=120) as http,
        ThreadPoolExecutor(4) as pool,
    ):
        futures = [pool.submit(http.post, "/v1/compress", json=body) for _ in range(4)]
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 4  # with no queue, three of them would get 429


# ---- nothing half-done on disk ------------------------------------------------------------------------


def _cli(settings, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGCTX_")}
    env |= {"RAGCTX_CACHE_DIR": str(settings.cache_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "ragctx.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate: Any, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the condition never came"
        time.sleep(0.05)


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "ms" and not k.endswith("_ms")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_a_killed_compress_resumes_to_the_output_of_an_uninterrupted_run(settings, nq20_rows, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "question": r["question"],
                    "passages": [{k: p[k] for k in ("id", "title", "text")} for p in r["passages"]],
                }
            )
            + "\n"
            for r in nq20_rows
        )
    )
    args = ["compress", "-i", str(src), "-m", "embed-passages", "--rate", "0.2"]
    whole = tmp_path / "whole.jsonl"
    assert _cli(settings, *args, "-o", str(whole)).wait(600) == 0

    out = tmp_path / "out.jsonl"
    partial = tmp_path / ".out.jsonl.partial"
    run = _cli(settings, *args, "-o", str(out))
    _wait_for(lambda: partial.exists() and partial.read_text().count("\n") >= 6)
    run.kill()  # kill -9: no cleanup runs
    run.wait()
    assert not out.exists() and partial.exists()
    done_before = partial.read_text().count("\n") - 1
    assert 0 < done_before < len(nq20_rows)
    resumed = _cli(settings, *args, "-o", str(out), "--resume")
    assert resumed.wait(600) == 0, resumed.stderr.read() if resumed.stderr else ""
    assert not partial.exists()
    got = [_without_timings(json.loads(line)) for line in out.read_text().splitlines()]
    want = [_without_timings(json.loads(line)) for line in whole.read_text().splitlines()]
    assert got == want
    # Another job's partial file is never continued.
    (tmp_path / ".other.jsonl.partial").write_text('{"ragctx_partial": "someone-else"}\n{}\n')
    other = _cli(settings, *args, "-o", str(tmp_path / "other.jsonl"), "--resume")
    assert other.wait(600) == 2 and "another job" in (other.stderr.read() if other.stderr else "")


@pytest.mark.slow
def test_a_killed_index_build_leaves_the_previous_index_and_its_folder_is_removed_next_time(
    settings, nq20_rows, tmp_path
):
    corpus = tmp_path / "corpus.jsonl"
    passages = [
        {"id": f"{r['qid']}-{p['id']}", "title": p["title"], "text": p["text"]}
        for r in nq20_rows
        for p in r["passages"]
    ]
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages[:20]))
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({**p, "id": f"{p['id']}-{i}"}) + "\n" for i in range(40) for p in passages))
    index = tmp_path / "ix"
    assert _cli(settings, "index", "build", str(corpus), "--index-dir", str(index)).wait(600) == 0
    assert index.is_symlink()
    first = os.readlink(index)

    build = _cli(settings, "index", "build", str(big), "--index-dir", str(index))
    _wait_for(lambda: len(list(tmp_path.glob(".ix.v-*"))) == 2)  # the new version is being filled
    time.sleep(1.0)
    build.kill()
    build.wait()
    assert os.readlink(index) == first  # the swap is one rename: before it, the old index is whole
    stale = [p for p in tmp_path.glob(".ix.v-*") if p.name != first]
    assert len(stale) == 1

    check = _cli(settings, "index", "build", str(corpus), "--index-dir", str(index))
    assert check.wait(600) == 0
    assert [p.name for p in tmp_path.glob(".ix.v-*")] == [os.readlink(index)]  # the killed build's folder is gone


def test_a_method_whose_calibration_is_missing_answers_503_naming_the_command(settings, registry, tmp_path):
    """AttnRank's profile is per model and passage count; none exists for k=3 in a fresh cache."""
    configured = load_settings(cache_dir=tmp_path / "fresh-cache")
    passages = [{"id": str(i), "text": f"Passage number {i} says something."} for i in range(3)]
    with running(create_app(configured, registry)) as url, httpx.Client(base_url=url, timeout=120) as http:
        body = {"question": "what?", "passages": passages, "method": "none", "stages": ["attnrank"]}
        response = http.post("/v1/compress", json=body)
    assert response.status_code == 503
    assert "ragctx calibrate attnrank --k 3" in response.json()["error"]["message"]


@pytest.mark.slow
def test_a_stalled_redis_sigstopped_mid_load_fails_no_request(redis_server, settings, registry, nq20_rows):
    engine = ContextEngine(
        load_settings(cache_dir=settings.cache_dir, segment_kv=True, redis_url=redis_server.url, redis_timeout_s=0.2),
        registry,
    )
    rows = nq20_rows[12:16]
    want = [engine.run(r["question"], passages_of(r)[:3], method="ehpc", budget=Budget(rate=0.3)).text for r in rows]
    assert redis_server.proc is not None
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(engine.run, r["question"], passages_of(r)[:3], method="ehpc", budget=Budget(rate=0.3))
            for r in rows * 4
        ]
        redis_server.proc.send_signal(signal.SIGSTOP)  # mid-load: some requests are already reading
        try:
            got = [f.result(timeout=300).text for f in futures]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
    assert got == want * 4
    assert engine.segment_cache.stats.fallbacks >= 1


def test_eight_huge_passages_in_flight_do_not_keep_a_small_request_waiting(service_url, nq20_rows):
    huge = {"question": "who?", "passages": [{"id": "a", "text": "word " * 380_000}]}  # 1.9 MB each
    small = {
        "question": nq20_rows[0]["question"],
        "passages": [{"id": "b", "text": "A short one."}],
        "method": "budget",
    }
    with httpx.Client(base_url=service_url, timeout=120) as http, ThreadPoolExecutor(9) as pool:
        floods = [pool.submit(http.post, "/v1/compress", json=huge) for _ in range(8)]
        t0 = time.monotonic()
        answer = http.post("/v1/compress", json=small)
        waited = time.monotonic() - t0
        codes = [f.result().status_code for f in floods]
    assert answer.status_code == 200 and waited < 10
    assert codes == [422] * 8
