"""LangChain components backed by ragctx (`pip install 'ragctx[langchain]'`).

- `RagctxCompressor`: a document compressor (e.g. for `ContextualCompressionRetriever`): keeps the spans of
  the retrieved documents that the pipeline keeps, within a token budget, and says where they came from.
- `RagctxRetriever`: retrieval + compression in one retriever, from the ragctx index.
- `AttentionReorder`: a document transformer that runs one reorder stage (lost in the middle now; the
  model-aware orders plug in by name).

Each runs in process (`engine=`, or a `ContextEngine` from the environment's settings when nothing is given)
or against a ragctx server (`base_url=`, `api_key=`). The async methods are real: in process the pipeline
runs in a worker thread, against a server the request goes through `httpx.AsyncClient`.

Every returned Document carries `metadata["ragctx"]`: `passage_id`, `spans` (`[[start, end], ...]`, character
offsets into the passage text), `scores`, `label` and `retrieval_score`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from ragctx.indexes.base import passage_from_document
from ragctx.integrations.backends import (
    KeptPassage,
    RagctxCompression,
    RagctxConnection,
    RequestOptions,
    ServerError,
    read_kept_passages,
)
from ragctx.registry import known_stage_names, methods
from ragctx.types import Passage

try:
    from langchain_core.callbacks import (
        AsyncCallbackManager,
        AsyncCallbackManagerForRetrieverRun,
        CallbackManager,
        CallbackManagerForRetrieverRun,
        Callbacks,
    )
    from langchain_core.documents import BaseDocumentCompressor, BaseDocumentTransformer, Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ragctx.integrations.langchain needs langchain-core: pip install 'ragctx[langchain]'") from exc

__all__ = ["AttentionReorder", "NothingKept", "RagctxCompressor", "RagctxRetriever", "ServerError"]

log = logging.getLogger(__name__)

# Custom callback events (`on_custom_event` of a LangChain callback handler): one per pipeline stage, and
# one when the compressor kept nothing and its `on_empty` policy decided.
STAGE_EVENT = "ragctx_stage"
EMPTY_EVENT = "ragctx_empty"


class NothingKept(ValueError):
    """The compressor kept no document and `on_empty="raise"`; the message says why."""


PROVENANCE_KEY = "ragctx"
# Metadata keys under which LangChain retrievers and rerankers commonly report a score (Cohere, FlashRank).
# Query-free orders still run through the pipeline, which wants a question; this one is never read.
_NO_QUERY = "(no query: the order does not depend on it)"


class RagctxCompressor(RagctxCompression, BaseDocumentCompressor):
    """Compresses retrieved documents with the ragctx pipeline.

    Returns one Document per passage that keeps something, in the pipeline's order; its text is the kept
    spans joined by a space, its metadata the input's (copied) plus `metadata["ragctx"]`, whose spans are
    offsets into the input's `page_content`. Passage ids are metadata `id`, else `Document.id`, else the
    position in the input; they must be unique.

    When nothing survives (every document below the relevance floor, say), `on_empty` decides: `keep_best`
    (default) returns the best-scored document whole and logs a warning, `empty` returns `[]`, `raise`
    raises `NothingKept`; each emits the custom callback event `ragctx_empty` with the reason. Every call
    emits `ragctx_stage` per stage (name, tokens in and out, ms).
    """

    on_empty: Literal["empty", "keep_best", "raise"] = Field(
        default="keep_best", description="What to return when no document keeps anything."
    )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        passages = passages_of(documents)
        answer = self.backend().compress(query, passages, self.request_options())
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        for name, data in _events(answer):
            manager.on_custom_event(name, data)
        out = compressed_documents(documents, passages, read_kept_passages(answer))
        if out:
            return out
        fallback, event = self._when_empty(documents, passages, answer)
        manager.on_custom_event(EMPTY_EVENT, event)
        return fallback

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        passages = passages_of(documents)
        answer = await self.backend().acompress(query, passages, self.request_options())
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        for name, data in _events(answer):
            await manager.on_custom_event(name, data)
        out = compressed_documents(documents, passages, read_kept_passages(answer))
        if out:
            return out
        fallback, event = self._when_empty(documents, passages, answer)
        await manager.on_custom_event(EMPTY_EVENT, event)
        return fallback

    def _when_empty(
        self, documents: Sequence[Document], passages: Sequence[Passage], answer: Mapping[str, Any]
    ) -> tuple[list[Document], dict[str, Any]]:
        reason = _empty_reason(answer)
        event = {"policy": self.on_empty, "reason": reason, "documents": len(documents)}
        if self.on_empty == "raise":
            raise NothingKept(f"ragctx kept none of the {len(documents)} documents: {reason}")
        if self.on_empty == "empty":
            return [], event
        best = _best_index(passages, answer)
        doc = documents[best]
        log.warning(
            "ragctx kept none of the %d documents (%s); returning the best-scored one whole (on_empty='keep_best')",
            len(documents),
            reason,
        )
        event["kept"] = passages[best].id
        whole: dict[str, Any] = {
            "passage_id": passages[best].id,
            "spans": [[0, len(doc.page_content)]],
            "scores": {},
            "label": None,
            "retrieval_score": None,
            "on_empty": "keep_best",
            "reason": reason,
        }
        return [
            Document(page_content=doc.page_content, metadata={**doc.metadata, PROVENANCE_KEY: whole}, id=doc.id)
        ], event


def _events(answer: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            STAGE_EVENT,
            {"stage": st["name"], "tokens_in": st["tokens_in"], "tokens_out": st["tokens_out"], "ms": st["ms"]},
        )
        for st in answer.get("stats", [])
    ]


def _empty_reason(answer: Mapping[str, Any]) -> str:
    for st in reversed(answer.get("stats", [])):
        details = st.get("details") or {}
        if details.get("reason"):
            return str(details["reason"])
        if details.get("below_floor"):
            return f"{details['below_floor']} passage(s) below the relevance floor of stage {st['name']!r}"
    return "no sentence fitted the budget"


def _best_index(passages: Sequence[Passage], answer: Mapping[str, Any]) -> int:
    """The document the pipeline scored highest (its first score, as the ranking stage wrote it); else the
    first one given."""
    scored = {p["id"]: next(iter(p["scores"].values())) for p in answer.get("passages", []) if p.get("scores")}
    if not scored:
        return 0
    return max(range(len(passages)), key=lambda i: scored.get(passages[i].id, float("-inf")))


class RagctxRetriever(RagctxCompression, BaseRetriever):
    """Retrieves from the ragctx index and compresses, in one step.

    Returns one Document per passage that keeps something, in the pipeline's order: its text is the kept
    spans joined by a space, its metadata the passage's (plus `title`) and `metadata["ragctx"]`, whose
    spans are offsets into the indexed passage text. A `stages` list without `retrieve` gets it in front.
    How many passages are retrieved is the engine's (or server's) `top_k` setting; the `top_k` field here,
    as in the REST API, caps the units kept.
    """

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        answer = self.backend().context(query, self.request_options())
        return [retrieved_document(p) for p in read_kept_passages(answer)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        answer = await self.backend().acontext(query, self.request_options())
        return [retrieved_document(p) for p in read_kept_passages(answer)]


class AttentionReorder(RagctxConnection, BaseDocumentTransformer):
    """Reorders documents with one ragctx reorder stage, through the same pipeline code.

    The query comes from the `query` keyword of `transform_documents`, else from the `query` field; the
    lost-in-the-middle orders don't need one, model-aware orders do. Documents come back unchanged (metadata
    copied, plus `metadata["ragctx"]`), only reordered.
    """

    stage: str = Field(default="reorder-lim-langchain", description="The reorder stage (`ragctx stages`).")
    query: str | None = Field(default=None, description="Query used when transform_documents gets none.")

    @model_validator(mode="after")
    def _known_stage(self) -> AttentionReorder:
        # A server may know stages this client does not, so only in-process names are checked here.
        if self.base_url is None and self.stage not in known_stage_names():
            raise ValueError(f"unknown stage {self.stage!r}; known: {sorted(known_stage_names())}")
        return self

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        if not documents:
            return []
        passages = passages_of(documents)
        answer = self.backend().compress(self._question(kwargs), passages, self._options())
        return compressed_documents(documents, passages, read_kept_passages(answer))

    async def atransform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        if not documents:
            return []
        passages = passages_of(documents)
        answer = await self.backend().acompress(self._question(kwargs), passages, self._options())
        return compressed_documents(documents, passages, read_kept_passages(answer))

    def _options(self) -> RequestOptions:
        # method "none": only this stage runs, whatever compression the engine or server is configured with.
        return RequestOptions(method="none", stages=(self.stage,))

    def _question(self, kwargs: Mapping[str, Any]) -> str:
        query = kwargs.get("query") or self.query
        if query:
            return str(query)
        known = methods().get(self.stage)
        if known is not None and not known.needs_question:
            return _NO_QUERY
        raise ValueError(f"stage {self.stage!r} needs the query: transform_documents(documents, query=...)")


def passages_of(documents: Sequence[Document]) -> list[Passage]:
    """Documents as passages: id from metadata `id`, else `Document.id`, else the position; unique."""
    passages = [passage_from_document(doc, position) for position, doc in enumerate(documents)]
    seen: set[str] = set()
    for p in passages:
        if p.id in seen:
            raise ValueError(f"two documents have the id {p.id!r}; ids (metadata `id` or Document.id) must be unique")
        seen.add(p.id)
    return passages


def compressed_documents(
    documents: Sequence[Document], passages: Sequence[Passage], kept: Sequence[KeptPassage]
) -> list[Document]:
    """The input documents that keep something, in the answer's order, cut to their kept spans."""
    by_id = {p.id: doc for p, doc in zip(passages, documents, strict=True)}
    out = []
    for result in kept:
        doc = by_id.get(result.id)
        if doc is None:
            raise ServerError(f"the answer has passage {result.id!r}, which was not among the documents sent")
        text = doc.page_content
        for span in result.spans:
            # The server must cut our own text; a mismatch means the offsets would mislead the caller.
            if not 0 <= span.start <= span.end <= len(text) or text[span.start : span.end] != span.text:
                raise ServerError(f"span [{span.start}, {span.end}) of passage {result.id!r} is not in its text")
        out.append(
            Document(
                page_content=" ".join(text[s.start : s.end] for s in result.spans),
                metadata={**doc.metadata, PROVENANCE_KEY: provenance(result)},
                id=doc.id,
            )
        )
    return out


def retrieved_document(result: KeptPassage) -> Document:
    metadata = dict(result.metadata)
    if result.title:
        metadata.setdefault("title", result.title)
    metadata[PROVENANCE_KEY] = provenance(result)
    return Document(page_content=result.text, metadata=metadata, id=result.id)


def provenance(result: KeptPassage) -> dict[str, Any]:
    """`metadata["ragctx"]`: which passage, which character ranges of it, and the scores that decided."""
    return {
        "passage_id": result.id,
        "spans": [[s.start, s.end] for s in result.spans],
        "scores": dict(result.scores),
        "label": result.label,
        "retrieval_score": result.retrieval_score,
    }
