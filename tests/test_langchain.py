"""LangChain components over real langchain-core Documents built from nq20 passages.

The compressor, the retriever and the reorder transformer must give LangChain users exactly what the
pipeline decided (same passages, same order, same spans), keep their metadata, stay within the budget, and
answer the same sync and async, in process and against a ragctx server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from ragctx.engine import ContextEngine  # noqa: E402
from ragctx.indexes.faiss_index import FaissIndex  # noqa: E402
from ragctx.integrations.langchain import (  # noqa: E402
    AttentionReorder,
    NothingKept,
    RagctxCompressor,
    RagctxRetriever,
    ServerError,
)
from ragctx.reordering.orders import lost_in_middle_langchain  # noqa: E402
from ragctx.settings import load_settings  # noqa: E402
from ragctx.state import Budget, passage_header  # noqa: E402
from ragctx.types import Passage  # noqa: E402
from tests.conftest import passages_of  # noqa: E402

INDEXED_ROWS = 5
API_KEY = "test-key-for-langchain"


def documents_of(row: dict) -> list[Document]:
    """The row's passages as a LangChain retriever would hand them over, with metadata of several kinds."""
    return [
        Document(
            page_content=p["text"],
            metadata={"id": p["id"], "title": p["title"], "source": "nq20", "rank": rank, "tags": ["dev"]},
        )
        for rank, p in enumerate(row["passages"])
    ]


def without_provenance(doc: Document) -> dict[str, Any]:
    return {k: v for k, v in doc.metadata.items() if k != "ragctx"}


def as_tuples(docs: list[Document]) -> list[tuple[str, dict[str, Any]]]:
    return [(d.page_content, d.metadata) for d in docs]


def rendered(docs: list[Document]) -> str:
    """The context the pipeline renders for these documents: numbered headers + kept text."""
    return "\n".join(
        passage_header(i, Passage(id="", text="", title=d.metadata.get("title", ""))) + d.page_content
        for i, d in enumerate(docs, 1)
    )


# ---- the compressor ---------------------------------------------------------------------------------------


def test_compressor_keeps_what_the_pipeline_keeps_in_its_order(engine, nq20_rows):
    row = nq20_rows[0]
    docs = documents_of(row)
    compressed = RagctxCompressor(engine=engine, method="budget", budget_tokens=200).compress_documents(
        docs, row["question"]
    )
    ctx = engine.run(row["question"], passages_of(row), method="budget", budget=Budget(tokens=200))
    kept = [p for p in ctx.passages if p.spans]
    assert 0 < len(compressed) < len(docs)  # dropped passages are not returned
    assert [d.metadata["ragctx"]["passage_id"] for d in compressed] == [p.passage.id for p in kept]
    assert [d.page_content for d in compressed] == [" ".join(s.text_of(p.passage) for s in p.spans) for p in kept]
    assert rendered(compressed) == ctx.text


@pytest.mark.parametrize("method", ["budget", "truncate", "random-drop"])
def test_kept_spans_are_exact_slices_of_the_input_page_content(engine, nq20_rows, method):
    for row in nq20_rows[:5]:
        docs = documents_of(row)
        by_id = {d.metadata["id"]: d for d in docs}
        compressor = RagctxCompressor(engine=engine, method=method, rate=0.3)
        for out in compressor.compress_documents(docs, row["question"]):
            source = by_id[out.metadata["ragctx"]["passage_id"]].page_content
            spans = out.metadata["ragctx"]["spans"]
            assert spans and all(0 <= a < b <= len(source) for a, b in spans)
            assert out.page_content == " ".join(source[a:b] for a, b in spans)


def test_input_metadata_is_kept_and_provenance_added_without_touching_the_input(engine, nq20_rows):
    row = nq20_rows[1]
    docs = documents_of(row)
    docs[3].metadata["relevance_score"] = 0.75  # a reranker's score becomes the retrieval score
    before = [(d.page_content, dict(d.metadata)) for d in docs]
    compressed = RagctxCompressor(engine=engine, rate=0.5, method="budget").compress_documents(docs, row["question"])
    by_id = {d.metadata["id"]: d for d in docs}
    for out in compressed:
        provenance = out.metadata["ragctx"]
        assert without_provenance(out) == by_id[provenance["passage_id"]].metadata
        assert set(provenance) == {"passage_id", "spans", "scores", "label", "retrieval_score"}
        expected_score = 0.75 if provenance["passage_id"] == docs[3].metadata["id"] else None
        assert provenance["retrieval_score"] == expected_score
    assert [(d.page_content, d.metadata) for d in docs] == before


def test_budget_is_respected_under_the_target_tokenizer(engine, nq20_rows):
    for row in nq20_rows[:5]:
        for limit in (60, 250):
            compressed = RagctxCompressor(engine=engine, method="budget", budget_tokens=limit).compress_documents(
                documents_of(row), row["question"]
            )
            assert engine.counter.count(" ".join(d.page_content for d in compressed)) <= limit
            # The budget covers the rendered context, headers included.
            assert engine.counter.count(rendered(compressed)) <= limit


def test_ids_come_from_metadata_else_document_id_else_position(engine, nq20_rows):
    row = nq20_rows[2]
    plain = [Document(page_content=p["text"]) for p in row["passages"][:4]]
    plain[1].id = "lc-1"
    plain[2].metadata["id"] = 42
    compressed = RagctxCompressor(engine=engine, method="none", stages=[]).compress_documents(plain, row["question"])
    assert [d.metadata["ragctx"]["passage_id"] for d in compressed] == ["0", "lc-1", "42", "3"]
    assert [d.id for d in compressed] == [None, "lc-1", None, None]


def test_duplicate_ids_and_conflicting_settings_are_refused(engine, nq20_rows):
    row = nq20_rows[0]
    docs = documents_of(row)[:3]
    docs[2].metadata["id"] = docs[0].metadata["id"]
    with pytest.raises(ValueError, match="must be unique"):
        RagctxCompressor(engine=engine).compress_documents(docs, row["question"])
    with pytest.raises(ValueError, match="not both"):
        RagctxCompressor(engine=engine, budget_tokens=100, rate=0.5)
    with pytest.raises(ValueError, match="not both"):
        RagctxCompressor(engine=engine, base_url="http://127.0.0.1:9")


def test_no_documents_give_no_documents(engine):
    assert RagctxCompressor(engine=engine).compress_documents([], "anything") == []


def test_async_compression_equals_sync_and_leaves_the_event_loop_free(engine, nq20_rows):
    row = nq20_rows[3]
    docs = documents_of(row)
    compressor = RagctxCompressor(engine=engine, method="budget", rate=0.4)
    sync = compressor.compress_documents(docs, row["question"])

    async def compress_while_ticking() -> tuple[list[Document], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        out = await compressor.acompress_documents(docs, row["question"])
        ticker.cancel()
        return list(out), ticks

    out, ticks = asyncio.run(compress_while_ticking())
    assert as_tuples(out) == as_tuples(list(sync))
    # Had the pipeline run on the loop's thread, the ticker would not have got past its first step.
    assert ticks > 1


# ---- the reorder transformer ------------------------------------------------------------------------------


def test_reorder_is_lost_in_the_middle_and_leaves_documents_whole(engine, nq20_rows):
    docs = documents_of(nq20_rows[0])[:7]
    reorder = AttentionReorder(engine=engine)
    out = reorder.transform_documents(docs)
    expected = lost_in_middle_langchain(docs)
    assert [d.page_content for d in out] == [d.page_content for d in expected]
    assert [without_provenance(d) for d in out] == [d.metadata for d in expected]
    assert all(d.metadata["ragctx"]["spans"] == [[0, len(d.page_content)]] for d in out)
    # a query changes nothing for a query-free order; async gives the same
    with_query = reorder.transform_documents(docs, query=nq20_rows[0]["question"])
    assert as_tuples(list(with_query)) == as_tuples(list(out))
    assert as_tuples(list(asyncio.run(reorder.atransform_documents(docs)))) == as_tuples(list(out))


def test_reorder_runs_the_stage_it_is_given_by_name(engine, nq20_rows):
    docs = documents_of(nq20_rows[0])[:5]
    out = AttentionReorder(engine=engine, stage="reorder-inverse").transform_documents(docs)
    assert [d.metadata["id"] for d in out] == [d.metadata["id"] for d in reversed(docs)]
    with pytest.raises(ValueError, match="unknown stage"):
        AttentionReorder(engine=engine, stage="attention-sort-someday")


# ---- the retriever ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(registry, nq20_rows, tmp_path_factory) -> Path:
    """A real FAISS index of the first rows' passages (ids repeat across rows: each is indexed once)."""
    unique = {p.id: p for row in nq20_rows[:INDEXED_ROWS] for p in passages_of(row)}
    directory: Path = tmp_path_factory.mktemp("lc-index") / "index"
    FaissIndex.build(directory, unique.values(), registry.embedder(), "default").close()
    return directory


@pytest.fixture(scope="module")
def indexed_engine(settings, registry, index_dir) -> ContextEngine:
    return ContextEngine(settings, registry, retriever=FaissIndex.open(index_dir, registry.embedder()))


def test_retriever_returns_compressed_passages_of_the_index(indexed_engine, nq20_rows):
    row = nq20_rows[0]
    retriever = RagctxRetriever(engine=indexed_engine, method="budget", budget_tokens=300)
    docs = retriever.invoke(row["question"])
    assert docs and indexed_engine.counter.count(rendered(docs)) <= 300
    index = indexed_engine.retriever
    assert isinstance(index, FaissIndex)
    sources = {p.id: p for p in index.get([d.metadata["ragctx"]["passage_id"] for d in docs])}
    for doc in docs:
        provenance = doc.metadata["ragctx"]
        source = sources[provenance["passage_id"]]
        assert doc.id == source.id and doc.metadata["title"] == source.title
        assert doc.page_content == " ".join(source.text[a:b] for a, b in provenance["spans"])
        assert provenance["retrieval_score"] is not None
    # the passage that answers the question is retrieved and survives compression
    gold = row["passages"][row["gold_index"]]["id"]
    assert gold in {d.id for d in docs}


def test_retriever_async_equals_sync(indexed_engine, nq20_rows):
    retriever = RagctxRetriever(engine=indexed_engine, method="budget", rate=0.2)
    question = nq20_rows[1]["question"]
    assert as_tuples(asyncio.run(retriever.ainvoke(question))) == as_tuples(retriever.invoke(question))


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata.get('title', '')}] {d.page_content}" for d in docs)


def test_an_lcel_chain_runs_retrieval_and_compression_end_to_end(indexed_engine, nq20_rows):
    row = nq20_rows[0]
    retriever = RagctxRetriever(engine=indexed_engine, method="budget", budget_tokens=250)
    chain = RunnableParallel(context=retriever | RunnableLambda(format_docs), question=RunnablePassthrough())
    result = chain.invoke(row["question"])
    assert result["question"] == row["question"]
    assert result["context"] == format_docs(retriever.invoke(row["question"]))
    assert asyncio.run(chain.ainvoke(row["question"])) == result


class MiniLMEmbeddings(Embeddings):
    """ragctx's own embedder as LangChain Embeddings, so a plain LangChain vector store can retrieve."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_compressor_after_a_langchain_vector_store_in_a_chain(engine, registry, nq20_rows):
    row = nq20_rows[0]
    store = InMemoryVectorStore(MiniLMEmbeddings(registry.embedder()))
    store.add_documents(documents_of(row))
    compressor = RagctxCompressor(engine=engine, method="budget", budget_tokens=150)

    def compress(inputs: dict[str, Any]) -> list[Document]:
        return list(compressor.compress_documents(inputs["docs"], inputs["question"]))

    async def acompress(inputs: dict[str, Any]) -> list[Document]:
        return list(await compressor.acompress_documents(inputs["docs"], inputs["question"]))

    compressed_chain = RunnableParallel(
        docs=store.as_retriever(search_kwargs={"k": 10}), question=RunnablePassthrough()
    ) | RunnableLambda(compress, afunc=acompress)
    chain = compressed_chain | RunnableLambda(format_docs)
    docs = compressed_chain.invoke(row["question"])
    assert docs and engine.counter.count(rendered(docs)) <= 150
    context = chain.invoke(row["question"])
    assert context == format_docs(docs)
    assert asyncio.run(chain.ainvoke(row["question"])) == context


# ---- against a ragctx server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(registry, index_dir) -> Iterator[str]:
    """The real ragctx service (`create_app` under uvicorn) on a loopback port, sharing the session's models.

    An unreachable upstream is configured only so that the service does not load a local reader LM, which
    these tests never use.
    """
    uvicorn = pytest.importorskip("uvicorn")
    from ragctx.api import create_app

    settings = load_settings(index_dir=index_dir, api_keys=[API_KEY], upstream_base_url="http://127.0.0.1:9/v1")
    server = uvicorn.Server(uvicorn.Config(create_app(settings, registry), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the ragctx service did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_server_compressor_equals_in_process_sync_and_async(engine, server_url, nq20_rows):
    for row in nq20_rows[:3]:
        docs = documents_of(row)
        options = {"method": "budget", "budget_tokens": 180}
        local = RagctxCompressor(engine=engine, **options).compress_documents(docs, row["question"])
        remote = RagctxCompressor(base_url=server_url, api_key=API_KEY, **options)
        assert as_tuples(list(remote.compress_documents(docs, row["question"]))) == as_tuples(list(local))
        remote_async = asyncio.run(remote.acompress_documents(docs, row["question"]))
        assert as_tuples(list(remote_async)) == as_tuples(list(local))


def test_server_retriever_and_reorder_equal_in_process(indexed_engine, server_url, nq20_rows):
    question = nq20_rows[0]["question"]
    options = {"method": "budget", "rate": 0.3}
    local = RagctxRetriever(engine=indexed_engine, **options).invoke(question)
    remote = RagctxRetriever(base_url=server_url, api_key=API_KEY, **options)
    assert local and as_tuples(remote.invoke(question)) == as_tuples(local)
    assert as_tuples(asyncio.run(remote.ainvoke(question))) == as_tuples(local)

    docs = documents_of(nq20_rows[1])[:6]
    reorder = AttentionReorder(base_url=server_url + "/", api_key=API_KEY)
    expected = AttentionReorder(engine=indexed_engine).transform_documents(docs)
    assert as_tuples(list(reorder.transform_documents(docs))) == as_tuples(list(expected))
    assert as_tuples(list(asyncio.run(reorder.atransform_documents(docs)))) == as_tuples(list(expected))


def test_server_errors_reach_the_caller_with_the_service_message(server_url, nq20_rows):
    row = nq20_rows[0]
    docs = documents_of(row)[:3]
    with pytest.raises(ServerError) as refused:
        RagctxCompressor(base_url=server_url, api_key="wrong").compress_documents(docs, row["question"])
    assert refused.value.status_code == 401
    with pytest.raises(ServerError, match="unknown method") as invalid:
        asyncio.run(
            RagctxCompressor(base_url=server_url, api_key=API_KEY, method="zip").acompress_documents(
                docs, row["question"]
            )
        )
    assert invalid.value.status_code == 422
    with pytest.raises(ServerError, match="failed"):
        RagctxCompressor(base_url="http://127.0.0.1:9").compress_documents(docs, row["question"])


# ---- nothing survives: an explicit policy, a warning, callback events ----------------------------------

UNRELATED = [
    Document(page_content="Bananas are rich in potassium and grow in tropical regions.", metadata={"id": "b"}),
    Document(page_content="The violin has four strings tuned in perfect fifths.", metadata={"id": "v"}),
]
UNRELATED_QUESTION = "what is the boiling point of liquid nitrogen in kelvin"


class RecordingHandler(BaseCallbackHandler):
    """A real LangChain callback handler that records ragctx's custom events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def test_when_nothing_survives_the_best_document_is_kept_with_a_warning_and_an_event(engine, caplog):
    handler = RecordingHandler()
    with caplog.at_level(logging.WARNING, logger="ragctx.integrations.langchain"):
        out = RagctxCompressor(engine=engine, rate=0.5).compress_documents(
            UNRELATED, UNRELATED_QUESTION, callbacks=[handler]
        )
    assert len(out) == 1 and out[0].page_content in {d.page_content for d in UNRELATED}
    assert out[0].metadata["ragctx"]["on_empty"] == "keep_best"
    assert "kept none of the 2 documents" in caplog.text
    names = [name for name, _ in handler.events]
    assert names[-1] == "ragctx_empty" and "relevance floor" in handler.events[-1][1]["reason"]
    stages = [data for name, data in handler.events if name == "ragctx_stage"]
    assert [s["stage"] for s in stages] == ["dedup", "embed-passages", "ehpc"]
    assert all(isinstance(s["ms"], float) and s["tokens_in"] >= s["tokens_out"] for s in stages)


def test_on_empty_empty_and_raise(engine):
    assert (
        RagctxCompressor(engine=engine, rate=0.5, on_empty="empty").compress_documents(UNRELATED, UNRELATED_QUESTION)
        == []
    )
    with pytest.raises(NothingKept, match="kept none of the 2 documents"):
        RagctxCompressor(engine=engine, rate=0.5, on_empty="raise").compress_documents(UNRELATED, UNRELATED_QUESTION)


def test_async_compression_emits_the_same_events(engine, nq20_rows):
    row = nq20_rows[0]
    docs = [Document(page_content=p.text, metadata={"id": p.id}) for p in passages_of(row)[:5]]
    sync, asyn = RecordingHandler(), RecordingHandler()
    RagctxCompressor(engine=engine, method="budget", rate=0.3).compress_documents(
        docs, row["question"], callbacks=[sync]
    )
    asyncio.run(
        RagctxCompressor(engine=engine, method="budget", rate=0.3).acompress_documents(
            docs, row["question"], callbacks=[asyn]
        )
    )
    strip = lambda events: [(n, {k: v for k, v in d.items() if k != "ms"}) for n, d in events]  # noqa: E731
    assert strip(sync.events) == strip(asyn.events) and sync.events


def test_the_documented_contextual_compression_retriever_runs_with_the_langchain_extra(indexed_engine, nq20_rows):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    row = nq20_rows[0]
    base = RagctxRetriever(engine=indexed_engine, method="none")
    retriever = ContextualCompressionRetriever(
        base_compressor=RagctxCompressor(engine=indexed_engine, rate=0.25), base_retriever=base
    )
    docs = retriever.invoke(row["question"])
    assert docs and all("ragctx" in d.metadata for d in docs)
