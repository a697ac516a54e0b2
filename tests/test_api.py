"""The REST service, run for real: uvicorn on a loopback port, the real models and a real FAISS index.

Only the upstream LLM is replaced, by a small OpenAI-compatible STUB server on loopback that records what
it is sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import need_data, passages_of
from openai import OpenAI

from ragctx.api import create_app
from ragctx.config import DEFAULT_STAGES
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.indexes.loaders import read_documents
from ragctx.settings import Settings, load_settings
from ragctx.state import Budget

API_KEY = "test-key-5f1c"


# ---- servers --------------------------------------------------------------------------------------------


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port (lifespan included); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        assert thread.is_alive(), "the service stopped during start-up"
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class StubUpstream:
    """A STUB of the upstream LLM: an OpenAI-compatible chat endpoint that records every request.

    `gate`, when set up, holds each request until it is opened; `entered` tells that one arrived.
    """

    ANSWER = "Stub says: May 18, 2018."
    MODELS = [
        {"id": "stub-large", "object": "model", "created": 1700000000, "owned_by": "stub-org"},
        {"id": "org/stub-small", "object": "model", "created": 1700000001, "owned_by": "stub-org"},
    ]

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # the upstream's model list: /v1/models and /v1/models/{id}
                models = {m["id"]: m for m in stub.MODELS}
                if self.path == "/v1/models":
                    data = {"object": "list", "data": stub.MODELS}
                elif self.path.startswith("/v1/models/") and unquote(self.path[len("/v1/models/") :]) in models:
                    data = models[unquote(self.path[len("/v1/models/") :])]
                else:
                    data = {
                        "error": {"message": f"The model {self.path} does not exist", "type": "invalid_request_error"}
                    }
                    self.send_response(404)
                    body = json.dumps(data).encode()
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.received.append(body)
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                stub.entered.set()
                if stub.gate is not None:
                    stub.gate.wait(10)
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for piece in stub.ANSWER.split(" "):
                        chunk = stub.chunk({"content": piece + " "})
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(f"data: {json.dumps(stub.chunk({}, 'stop'))}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                data = json.dumps(stub.completion(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "stub",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def system_prompt_of(self, request: dict[str, Any]) -> str:
        return "\n".join(m["content"] for m in request["messages"] if m["role"] == "system")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory: pytest.TempPathFactory, registry) -> Path:
    """The first 200 passages of the NQ-20 corpus, indexed."""
    corpus = need_data("nq20/corpus.jsonl.gz")
    directory = tmp_path_factory.mktemp("api") / "index"
    passages = islice(read_documents([corpus], chunk_words=120), 200)
    FaissIndex.build(directory, passages, registry.embedder(), embedder_name="default").close()
    return directory


def api_settings(index_dir: Path, **overrides: Any) -> Settings:
    return load_settings(index_dir=index_dir, **overrides)


@pytest.fixture(scope="module")
def local_url(corpus_index: Path, registry) -> Iterator[str]:
    """The service with the local reader (no upstream), small request limits, no authentication."""
    settings = api_settings(corpus_index, max_passages=25, max_request_chars=100_000)
    with running(create_app(settings, registry)) as url:
        yield url


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    upstream = StubUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def proxy_url(corpus_index: Path, registry, stub: StubUpstream) -> Iterator[str]:
    """The service in front of the stub upstream, with an API key."""
    settings = api_settings(corpus_index, upstream_base_url=stub.base_url, api_keys=[API_KEY])
    with running(create_app(settings, registry)) as url:
        yield url


@pytest.fixture
def http(local_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_url, timeout=120) as client:
        yield client


def short_passages(row: dict[str, Any], n: int = 3, chars: int = 400) -> list[dict[str, Any]]:
    """The row's first passages, cut short: the local reader answers fast from a short context."""
    return [{"id": p.id, "title": p.title, "text": p.text[:chars]} for p in passages_of(row)[:n]]


def parse_kept(header: str) -> list[tuple[str, int, int]]:
    spans = []
    for entry in header.split(","):
        passage_id, _, offsets = entry.rpartition(":")
        start, end = offsets.split("-")
        spans.append((unquote(passage_id), int(start), int(end)))
    return spans


# ---- /v1/context and /v1/compress -----------------------------------------------------------------------


def test_context_retrieves_from_the_index_and_fits_the_budget(http):
    response = http.post("/v1/context", json={"question": "who won the first nobel prize in physics", "budget": 150})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "question",
        "context",
        "tokenizer",
        "order",
        "tokens_in",
        "tokens_out",
        "passages",
        "stats",
    }
    assert [s["name"] for s in body["stats"]] == DEFAULT_STAGES
    assert 0 < body["tokens_out"] <= 150 < body["tokens_in"]
    scores = [p["retrieval_score"] for p in body["passages"]]
    assert scores == sorted(scores, reverse=True)
    assert "Nobel" in body["context"]
    for passage in body["passages"]:
        for span in passage["spans"]:
            assert span["end"] > span["start"] and span["text"]


def test_compress_returns_exactly_what_the_engine_returns(http, engine, nq20_rows):
    row = nq20_rows[1]
    passages = [{"id": p["id"], "title": p["title"], "text": p["text"]} for p in row["passages"]]
    response = http.post("/v1/compress", json={"question": row["question"], "passages": passages, "budget": 120})
    assert response.status_code == 200, response.text
    expected = engine.run(
        row["question"],
        passages_of(row),
        budget=Budget(tokens=120),
        stages=[s for s in DEFAULT_STAGES if s != "retrieve"],
    )
    got, want = response.json(), expected.to_dict()
    for result in (got, want):
        for stat in result["stats"]:  # timings differ from run to run
            stat.pop("ms")
            stat["details"] = {k: v for k, v in stat["details"].items() if not k.endswith("_ms")}
    assert got == want


def test_compress_takes_rate_method_and_stages(http, nq20_rows):
    row = nq20_rows[2]
    response = http.post(
        "/v1/compress",
        json={
            "question": row["question"],
            "passages": row["passages"],
            "rate": 0.25,
            "method": "truncate",
            "stages": ["retrieve", "reorder-inverse", "budget"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["name"] for s in body["stats"]] == [
        "reorder-inverse",
        "truncate",
    ]  # no retrieval of given passages
    assert body["tokens_out"] < 0.5 * body["tokens_in"]
    assert body["order"][0] == row["passages"][-1]["id"]
    # Keys beyond id, title, text and metadata are kept as metadata.
    assert {p["metadata"]["is_gold"] for p in body["passages"]} <= {True, False}


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"passages": [{"id": "a", "text": "x"}]}, 422, "question"),
        (
            {"question": "q", "passages": [{"id": "a", "text": "x"}], "budget": 10, "rate": 0.5},
            422,
            "not both",
        ),
        ({"question": "q", "passages": [{"id": "a", "text": "x"}], "method": "zip"}, 422, "unknown method"),
        ({"question": "q", "passages": [{"id": "a", "text": "x"}], "stages": ["fold"]}, 422, "unknown stage"),
        ({"question": "q", "passages": [{"text": "x"}]}, 422, "passages.0.id"),
        ({"question": "q", "passages": [{"id": "a", "text": "x"}], "rate": 1.5}, 422, "rate"),
        ({"question": "q", "passages": [{"id": "a", "text": "x"}], "rate": 0}, 422, "rate"),
        ({"question": "q", "passages": [{"id": "a", "text": "x"}], "budget": 0}, 422, "budget"),
        (
            {"question": "q", "passages": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
            400,
            "appears twice",
        ),
    ],
)
def test_bad_input_gets_a_json_error_that_says_what_is_wrong(http, payload, status, fragment):
    response = http.post("/v1/compress", json=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_paths_get_json_errors_too(http):
    response = http.post("/v1/compress", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_too_many_passages_is_422_and_too_large_a_body_is_413(http):
    # The schema states the passage limits (maxItems, maxLength), so breaking them is a validation error;
    # the byte limit on the body (100 kB on this service) is in no schema and keeps HTTP's 413.
    many = [{"id": str(i), "text": f"passage {i}"} for i in range(26)]
    response = http.post("/v1/compress", json={"question": "q", "passages": many})
    assert response.status_code == 422
    assert "limit is 25" in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "request_too_large"
    huge = [{"id": "1", "text": "word " * 30_000}]
    response = http.post("/v1/compress", json={"question": "q", "passages": huge})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert "bytes" in response.json()["error"]["message"]


def test_request_ids_are_taken_from_the_caller_or_made(http):
    response = http.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    made = http.get("/healthz").headers["x-request-id"]
    assert len(made) == 32


# ---- /v1/rerank -----------------------------------------------------------------------------------------

COHERE_DOCS_EXAMPLE = {
    "model": "rerank-v3.5",
    "query": "What is the capital of the United States?",
    "top_n": 3,
    "documents": [
        "Carson City is the capital city of the American state of Nevada.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. "
        "Its capital is Saipan.",
        "Washington, D.C. (also known as simply Washington or D.C., and officially as the District of "
        "Columbia) is the capital of the United States. It is a federal district.",
        "Capitalization or capitalisation in English grammar is the use of a capital letter at the start of a word.",
        "Capital punishment has existed in the United States since before the United States was a country.",
    ],
}


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_rerank_answers_a_cohere_payload_in_cohere_shape(http, registry, path):
    response = http.post(path, json=COHERE_DOCS_EXAMPLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"id", "results", "meta"} <= set(body)  # Cohere's keys (and Jina's `model`, `usage`)
    results = body["results"]
    assert len(results) == 3
    assert results[0]["index"] == 2  # Washington, D.C.
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)
    embedder = registry.embedder()
    vectors = embedder.encode(
        [COHERE_DOCS_EXAMPLE["query"], *COHERE_DOCS_EXAMPLE["documents"]], normalize_embeddings=True
    )
    for r in results:
        assert r["relevance_score"] == pytest.approx(float(np.dot(vectors[0], vectors[1 + r["index"]])), abs=1e-4)
        assert "document" not in r
        assert "ragctx" not in r  # only with ragctx.compress: never a block of nulls


def test_rerank_returns_object_documents_when_asked(http):
    docs = [
        {"text": "Paris is the capital of France.", "source": "a"},
        {"text": "Bananas are yellow.", "source": "b"},
    ]
    response = http.post("/v1/rerank", json={"query": "capital of France", "documents": docs, "return_documents": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert results[0]["document"] == docs[0]


# ---- /v1/chat/completions with the local reader -------------------------------------------------------


def test_chat_with_the_local_reader_through_the_openai_client(local_url, nq20_rows):
    row = nq20_rows[0]
    client = OpenAI(base_url=f"{local_url}/v1", api_key="unused", max_retries=0, timeout=120)
    health_ms: list[float] = []
    done = threading.Event()

    def probe_health() -> None:  # the event loop must stay free while the model works in a thread
        with httpx.Client(base_url=local_url, timeout=10) as probe:
            while not done.is_set():
                started = time.perf_counter()
                assert probe.get("/healthz").status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)

    prober = threading.Thread(target=probe_health)
    prober.start()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="local",
            messages=[{"role": "user", "content": row["question"]}],
            extra_body={"ragctx": {"passages": short_passages(row), "budget": 80}},
        )
    finally:
        done.set()
        prober.join()
    completion = raw.parse()
    answer = completion.choices[0].message.content
    assert isinstance(answer, str) and answer.strip()
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    extra = completion.model_extra["ragctx"]
    assert extra["tokens_out"] <= 80
    kept = parse_kept(raw.headers["x-ragctx-kept"])
    assert kept == [(p["id"], s["start"], s["end"]) for p in extra["passages"] for s in p["spans"]]
    assert health_ms and max(health_ms) < 1000, health_ms


def test_streamed_chat_with_the_local_reader_ends_like_openai_streams(local_url, nq20_rows):
    row = nq20_rows[3]
    client = OpenAI(base_url=f"{local_url}/v1", api_key="unused", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": row["question"]}],
        stream=True,
        extra_body={"ragctx": {"passages": short_passages(row, n=2), "budget": 60}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_local_stream_is_server_sent_events_ending_with_done(local_url, nq20_rows):
    row = nq20_rows[4]
    gold = passages_of(row)[row["gold_index"]]
    # The answer passage: the relevance floor keeps an unrelated passage out of the context.
    passage = {"id": gold.id, "title": gold.title, "text": gold.text[:200]}
    payload = {
        "messages": [{"role": "user", "content": row["question"]}],
        "stream": True,
        "max_tokens": 4,
        "ragctx": {"passages": [passage], "budget": 200},
    }
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{local_url}/v1/chat/completions", json=payload) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-ragctx-kept"].startswith(gold.id + ":0-")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_chat_with_compllm_reads_concept_embeddings_and_text_routes_refuse_it(local_url, nq20_rows):
    row = nq20_rows[4]
    with httpx.Client(base_url=local_url, timeout=120) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": row["question"]}],
                "ragctx": {"passages": short_passages(row), "method": "compllm"},
            },
        )
        compress = client.post(
            "/v1/compress", json={"question": row["question"], "passages": short_passages(row), "method": "compllm"}
        )
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["choices"][0]["message"]["content"].strip()
    stage = body["ragctx"]["stats"][-1]
    assert stage["name"] == "compllm" and stage["tokens_out"] < stage["tokens_in"]
    assert compress.status_code == 400
    assert "only a local model can read" in compress.json()["error"]["message"]


# ---- /v1/chat/completions forwarded upstream ---------------------------------------------------------


def test_chat_is_forwarded_upstream_with_the_retrieved_context(proxy_url, stub):
    client = OpenAI(base_url=f"{proxy_url}/v1", api_key=API_KEY, max_retries=0)
    question = "who won the first nobel prize in physics"
    raw = client.chat.completions.with_raw_response.create(
        model="big-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        temperature=0.1,
        extra_body={"ragctx": {"budget": 200}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == StubUpstream.ANSWER
    sent = stub.received[-1]
    assert sent["model"] == "big-model" and sent["temperature"] == 0.1
    assert "ragctx" not in sent  # our extra field stays with us
    system = stub.system_prompt_of(sent)
    assert system.startswith("Be brief.")
    context = completion.model_extra["ragctx"]["context"]
    assert context and context in system
    assert sent["messages"][-1] == {"role": "user", "content": question}
    assert "authorization" not in stub.headers[-1]  # the caller's key is for ragctx, not for upstream
    assert parse_kept(raw.headers["x-ragctx-kept"])


def test_soft_prompts_are_not_sent_to_a_text_only_upstream(proxy_url, stub, nq20_rows):
    sent_before = len(stub.received)
    with httpx.Client(base_url=proxy_url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "big-model",
                "messages": [{"role": "user", "content": "who?"}],
                "ragctx": {"passages": short_passages(nq20_rows[0]), "method": "compllm"},
            },
        )
    assert response.status_code == 400
    assert "cannot be sent to the text-only upstream" in response.json()["error"]["message"]
    assert len(stub.received) == sent_before


def test_streamed_chat_passes_the_upstream_stream_through(proxy_url, stub, nq20_rows):
    row = nq20_rows[5]
    client = OpenAI(base_url=f"{proxy_url}/v1", api_key=API_KEY, max_retries=0)
    passages = short_passages(row, n=2)
    raw = client.chat.completions.with_raw_response.create(
        model="big-model",
        messages=[{"role": "user", "content": row["question"]}],
        stream=True,
        extra_body={"ragctx": {"passages": passages, "method": "none"}},
    )
    kept = parse_kept(raw.headers["x-ragctx-kept"])
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse())
    assert text.strip() == StubUpstream.ANSWER
    sent = stub.received[-1]
    assert sent["stream"] is True
    system = stub.system_prompt_of(sent)
    assert all(p["text"] in system for p in passages)  # method none: everything kept, verbatim
    assert [k[0] for k in kept] == [p["id"] for p in passages]


def test_api_keys_are_required_except_for_healthz(proxy_url):
    payload = {"query": "q", "documents": ["a", "b"]}
    with httpx.Client(base_url=proxy_url, timeout=60) as client:
        missing = client.post("/v1/rerank", json=payload)
        wrong = client.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer nope"})
        right = client.post("/v1/rerank", json=payload, headers={"Authorization": f"Bearer {API_KEY}"})
        health = client.get("/healthz")
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    assert right.status_code == 200
    assert health.status_code == 200


# ---- limits --------------------------------------------------------------------------------------------


def test_a_full_service_answers_429_with_retry_after(corpus_index, registry, nq20_rows):
    upstream = StubUpstream()
    upstream.gate = threading.Event()
    settings = api_settings(corpus_index, upstream_base_url=upstream.base_url, max_concurrency=1)
    row = nq20_rows[6]
    compress = {"question": row["question"], "passages": short_passages(row)}
    try:
        with running(create_app(settings, registry)) as url, httpx.Client(base_url=url, timeout=60) as client:
            held: dict[str, httpx.Response] = {}
            chat = {
                "messages": [{"role": "user", "content": row["question"]}],
                "ragctx": {"passages": compress["passages"]},
            }
            holder = threading.Thread(target=lambda: held.update(r=client.post("/v1/chat/completions", json=chat)))
            holder.start()
            assert upstream.entered.wait(30)  # the chat request now holds the only slot
            refused = client.post("/v1/compress", json=compress)
            upstream.gate.set()
            holder.join(30)
            after = client.post("/v1/compress", json=compress)
            metrics = client.get("/metrics").text
    finally:
        upstream.close()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert held["r"].status_code == 200
    assert after.status_code == 200
    assert 'ragctx_rejections_total{reason="busy"} 1.0' in metrics


def test_a_request_over_the_time_limit_gets_504_and_an_unreachable_redis_is_reported_but_not_fatal(
    corpus_index, registry
):
    settings = api_settings(corpus_index, request_timeout_s=1e-4, redis_url="redis://127.0.0.1:1/0")
    with running(create_app(settings, registry)) as url, httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/context", json={"question": "who won the first nobel prize in physics"})
        ready = client.get("/readyz")
    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": "the request took longer than the service's limit of 0.0001 s",
        "type": "timeout_error",
    }
    # Redis only caches segments: without it requests are computed, so the service stays ready.
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"].startswith("unreachable")
    assert ready.json()["checks"]["redis"].endswith("(computing without the segment cache)")


# ---- documents, readiness, metrics --------------------------------------------------------------------


def test_documents_create_the_index_then_extend_it(tmp_path, registry, nq20_rows):
    settings = api_settings(tmp_path / "fresh-index")
    first, second = nq20_rows[7]["passages"][:12], nq20_rows[7]["passages"][8:16]
    question = {"question": nq20_rows[7]["question"], "budget": 100}
    with running(create_app(settings, registry)) as url, httpx.Client(base_url=url, timeout=120) as client:
        before = client.get("/readyz").json()
        no_index = client.post("/v1/context", json=question)
        created = client.post("/v1/documents", json={"passages": first})
        extended = client.post("/v1/documents", json={"passages": second})
        answered = client.post("/v1/context", json=question)
    assert before["checks"]["index"] == "absent"
    assert no_index.status_code == 409 and no_index.json()["error"]["type"] == "no_index"
    assert created.json() == {"added": 12, "skipped_duplicates": [], "count": 12, "created": True}
    assert extended.json() == {
        "added": 4,
        "skipped_duplicates": [p["id"] for p in second[:4]],
        "count": 16,
        "created": False,
    }
    assert answered.status_code == 200
    assert set(answered.json()["order"]) <= {p["id"] for p in first + second}


def test_readyz_reports_models_index_and_redis(http):
    response = http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"models": "loaded", "index": "open (200 passages)", "redis": "not configured"},
    }


def test_metrics_count_requests_stages_tokens_and_batches(http, nq20_rows):
    row = nq20_rows[8]
    http.post("/v1/compress", json={"question": row["question"], "passages": row["passages"], "budget": 100})
    http.post("/v1/rerank", json={"query": row["question"], "documents": [p["text"] for p in row["passages"]]})
    text = http.get("/metrics").text
    assert 'ragctx_request_seconds_count{method="POST",route="/v1/compress",status="200"}' in text
    assert 'ragctx_stage_seconds_count{stage="ehpc"}' in text  # the default chain's last stage
    assert 'ragctx_tokens_in_total{route="/v1/compress"}' in text
    assert 'ragctx_tokens_out_total{route="/v1/compress"}' in text
    assert 'ragctx_batch_size_count{batcher="embedder"}' in text
    assert "ragctx_cache_hits_total" in text and "ragctx_fallbacks_total" in text
