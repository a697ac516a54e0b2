"""Drop-in for the clients users already have, each driven with its own unchanged client package against a
running service: OpenAI's model listing, Cohere's rerank (with `max_tokens_per_doc` that really truncates),
TEI's and Jina's rerank bodies, and rerank that also returns each document pruned for the query.
The upstream LLM is a STUB (tests.test_api.StubUpstream), as it lies outside ragctx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import NotFoundError, OpenAI

from tests.test_api import API_KEY, StubUpstream, corpus_index, local_url, proxy_url, stub  # noqa: F401

pytestmark = pytest.mark.slow

LONG = (
    "Bananas are yellow and sweet. They grow in tropical regions on large plants. Many people eat them for "
    "breakfast. The capital of France is Paris, which is also its largest city. Bananas are rich in potassium."
)
DOCS = [
    "Carson City is the capital city of the American state of Nevada.",
    LONG,
    "Capitalization in English grammar is the use of a capital letter at the start of a word.",
]


@pytest.fixture
def http(local_url: str) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=local_url, timeout=120) as client:
        yield client


def test_the_openai_client_lists_and_retrieves_the_local_reader(local_url):  # noqa: F811
    client = OpenAI(base_url=f"{local_url}/v1", api_key="unused", max_retries=0)
    models = client.models.list().data
    assert [m.id for m in models] == ["ragctx-local/default"]
    assert models[0].object == "model" and models[0].owned_by == "ragctx" and models[0].created > 0
    assert client.models.retrieve("ragctx-local/default").id == "ragctx-local/default"
    with pytest.raises(NotFoundError, match="not found"):
        client.models.retrieve("gpt-unknown")


def test_with_an_upstream_the_models_are_the_upstreams(proxy_url, stub: StubUpstream):  # noqa: F811
    client = OpenAI(base_url=f"{proxy_url}/v1", api_key=API_KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [m["id"] for m in stub.MODELS]
    assert client.models.retrieve("org/stub-small").owned_by == "stub-org"  # an id with a slash
    with pytest.raises(NotFoundError):
        client.models.retrieve("nope")


def test_cohere_client_rerank_truncates_documents_to_max_tokens_per_doc(local_url):  # noqa: F811
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=local_url)
    whole = client.rerank(model="rerank-v3.5", query="what is the capital of france", documents=DOCS)
    cut = client.rerank(
        model="rerank-v3.5", query="what is the capital of france", documents=DOCS, max_tokens_per_doc=16
    )
    score = {r.index: r.relevance_score for r in whole.results}
    cut_score = {r.index: r.relevance_score for r in cut.results}
    assert whole.results[0].index == 1  # the long document holds the answer...
    assert cut_score[1] < score[1] - 0.1  # ...after its first 16 tokens ("Bananas are yellow...") it does not
    assert cut_score[0] == pytest.approx(score[0], abs=1e-5)  # a document under the limit is unchanged
    assert cut.meta.tokens.input_tokens < whole.meta.tokens.input_tokens


def test_jina_body_gets_model_usage_and_documents(http):
    body = {
        "model": "jina-reranker-v2",
        "query": "capital of france",
        "documents": DOCS,
        "top_n": 2,
        "return_documents": True,
    }
    reply = http.post("/v1/rerank", json=body).json()
    assert reply["model"] == "jina-reranker-v2"
    assert reply["usage"]["total_tokens"] > 0 and reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"]
    assert [r["document"]["text"] for r in reply["results"]] == [DOCS[r["index"]] for r in reply["results"]]
    assert len(reply["results"]) == 2


def test_results_keep_the_callers_document_ids(http):
    docs = [{"id": "nv", "text": DOCS[0]}, {"id": 7, "text": DOCS[1]}, {"text": DOCS[2]}]
    results = http.post("/v1/rerank", json={"query": "capital of france", "documents": docs}).json()["results"]
    assert {r["index"]: r.get("id") for r in results} == {0: "nv", 1: "7", 2: None}


def test_tei_rerank_body_and_reply(http):
    reply = http.post("/rerank", json={"query": "capital of france", "texts": DOCS, "return_text": True})
    assert reply.status_code == 200, reply.text
    ranks = reply.json()
    assert isinstance(ranks, list) and ranks[0]["index"] == 1
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all(0 <= r["score"] <= 1 for r in ranks) and ranks[0]["text"] == LONG
    raw = http.post("/rerank", json={"query": "capital of france", "texts": DOCS, "raw_scores": True}).json()
    assert {r["index"]: r["score"] for r in raw} == {
        r["index"]: pytest.approx(2 * r["score"] - 1, abs=1e-5) for r in ranks
    }
    assert "text" not in raw[0]
    huge = "word " * 600
    refused = http.post("/rerank", json={"query": "q", "texts": [huge]})
    assert refused.status_code == 413 and "truncate" in refused.json()["error"]["message"]
    assert http.post("/rerank", json={"query": "q", "texts": [huge], "truncate": True}).status_code == 200


def test_rerank_can_return_each_document_pruned_for_the_query(http):
    body = {
        "query": "what is the capital of france",
        "documents": [{"id": "long", "text": LONG}, DOCS[0]],
        "ragctx": {"compress": True},
    }
    reply = http.post("/v1/rerank", json=body)
    assert reply.status_code == 200, reply.text
    top = reply.json()["results"][0]
    assert top["id"] == "long"
    pruned = top["ragctx"]
    assert "Paris" in pruned["text"] and "Bananas" not in pruned["text"]
    assert all(LONG[s["start"] : s["end"]] == s["text"] for s in pruned["spans"])
    assert pruned["tokens_out"] < pruned["tokens_in"]
    assert "label" not in pruned  # not computed: absent, not null


def test_rerank_is_strict_about_types(http):
    for bad in ({"return_documents": 0}, {"return_documents": "yes"}, {"top_n": 0}, {"max_tokens_per_doc": 0}):
        reply = http.post("/v1/rerank", json={"query": "q", "documents": ["a"], **bad})
        assert reply.status_code == 422, (bad, reply.text)
    assert http.post("/rerank", json={"query": "q", "texts": ["a"], "raw_scores": 1}).status_code == 422
