"""The LlamaIndex node postprocessor inside a real LlamaIndex query engine: a `VectorStoreIndex` over the
bundled sample corpus embedded with ragctx's MiniLM, retrieving, then `RagctxPostprocessor` compressing
or reranking, in process and against a running service, sync and async. The LLM of the query engine is
llama-index's own MockLLM (a STUB: the LLM lies outside ragctx; `response_mode="no_text"` never calls it)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings as LlamaSettings  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

from ragctx.api import create_app  # noqa: E402
from ragctx.integrations.llamaindex import RagctxPostprocessor  # noqa: E402
from ragctx.sample import sample_corpus_path  # noqa: E402
from tests.test_api import running  # noqa: E402

pytestmark = pytest.mark.slow
QUESTION = "who designed the garden city of new earswick"


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex's embedding interface over the embedder ragctx ships (all-MiniLM-L6-v2)."""

    _model: Any = PrivateAttr()

    def __init__(self, model: Any) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2")
        self._model = model

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self._model.encode(texts, normalize_embeddings=True)]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


@pytest.fixture(scope="module")
def vector_index(registry) -> VectorStoreIndex:
    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in islice(fh, 300)]
    nodes = [
        TextNode(id_=r["id"], text=r["text"], metadata={"title": r.get("title", ""), "source": "sample"}) for r in rows
    ]
    return VectorStoreIndex(nodes, embed_model=MiniLMEmbedding(registry.embedder()))


def retrieved(vector_index: VectorStoreIndex, k: int = 8) -> list[NodeWithScore]:
    return vector_index.as_retriever(similarity_top_k=k).retrieve(QUESTION)


@pytest.fixture
def mock_llm() -> Iterator[MockLLM]:
    """LlamaIndex's global LLM as its MockLLM (some synthesizers read the global even with `llm=` given)."""
    previous = LlamaSettings._llm
    LlamaSettings.llm = MockLLM()
    try:
        yield LlamaSettings.llm
    finally:
        LlamaSettings._llm = previous


def test_a_query_engine_with_the_postprocessor_returns_compressed_nodes_with_provenance(vector_index, engine, mock_llm):
    post = RagctxPostprocessor(engine=engine, rate=0.25)
    query_engine = RetrieverQueryEngine.from_args(
        vector_index.as_retriever(similarity_top_k=8),
        llm=MockLLM(),
        node_postprocessors=[post],
        response_mode="no_text",
    )
    response = query_engine.query(QUESTION)
    nodes = response.source_nodes
    assert nodes and any("Unwin" in n.node.get_content() for n in nodes)
    originals = {n.node.node_id: n.node.get_content() for n in retrieved(vector_index)}
    kept_chars = sum(len(n.node.get_content()) for n in nodes)
    assert kept_chars < 0.5 * sum(len(t) for t in originals.values())
    for n in nodes:
        meta = n.node.metadata
        assert meta["source"] == "sample" and meta["ragctx"]["passage_id"] == n.node.node_id  # metadata kept
        text = originals[n.node.node_id]
        assert n.node.get_content() == " ".join(text[a:b] for a, b in meta["ragctx"]["spans"])


def test_rerank_mode_keeps_nodes_whole_best_first(vector_index, engine):
    nodes = retrieved(vector_index)
    shuffled = nodes[::-1]
    out = RagctxPostprocessor(engine=engine, mode="rerank", rate=1.0).postprocess_nodes(shuffled, query_str=QUESTION)
    by_id = {n.node.node_id: n.node.get_content() for n in nodes}
    assert [n.node.get_content() for n in out] == [by_id[n.node.node_id] for n in out]  # whole
    scores = [n.score for n in out]
    assert scores == sorted(scores, reverse=True)
    assert "Unwin" in out[0].node.get_content()


def test_async_equals_sync_and_the_inputs_are_untouched(vector_index, engine):
    nodes = retrieved(vector_index)
    before = [n.node.get_content() for n in nodes]
    post = RagctxPostprocessor(engine=engine, method="budget", rate=0.2)
    sync = post.postprocess_nodes(nodes, QueryBundle(QUESTION))
    asyn = asyncio.run(post.apostprocess_nodes(nodes, QueryBundle(QUESTION)))
    assert [(n.node.node_id, n.node.get_content()) for n in sync] == [
        (n.node.node_id, n.node.get_content()) for n in asyn
    ]
    assert [n.node.get_content() for n in nodes] == before


@pytest.fixture(scope="module")
def service_url(settings, registry) -> Iterator[str]:
    with running(create_app(settings, registry)) as url:
        yield url


def test_against_the_service_equals_in_process(vector_index, engine, service_url):
    nodes = retrieved(vector_index)
    local = RagctxPostprocessor(engine=engine, rate=0.25).postprocess_nodes(nodes, query_str=QUESTION)
    served = RagctxPostprocessor(base_url=service_url, rate=0.25)
    remote = served.postprocess_nodes(nodes, query_str=QUESTION)
    remote_async = asyncio.run(served.apostprocess_nodes(nodes, query_str=QUESTION))
    want = [(n.node.node_id, n.node.get_content()) for n in local]
    assert want == [(n.node.node_id, n.node.get_content()) for n in remote]
    assert want == [(n.node.node_id, n.node.get_content()) for n in remote_async]


def test_no_query_is_refused(engine, vector_index):
    with pytest.raises(ValueError, match="needs the query"):
        RagctxPostprocessor(engine=engine).postprocess_nodes(retrieved(vector_index))
