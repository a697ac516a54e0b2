"""The retriever interface, and an adapter for LangChain-style retrievers (without importing LangChain)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ragctx.types import Passage

# Metadata keys under which LangChain retrievers and rerankers commonly report a score.
_SCORE_KEYS = ("score", "relevance_score", "similarity")


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the `top_k` passages for a query, best first; `Passage.score` = similarity."""

    def search(self, query: str, top_k: int) -> list[Passage]: ...


@dataclass
class LangChainRetriever:
    """Wraps an object with `.invoke(query) -> list[Document]` (`page_content`, `metadata`) as a Retriever.

    The id comes from metadata `id`, else the document's own `id` attribute, else its rank; the title from
    metadata `title`; the score from a numeric metadata `score`/`relevance_score`/`similarity`, if any.
    """

    retriever: Any

    def search(self, query: str, top_k: int) -> list[Passage]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 (got {top_k})")
        documents = list(self.retriever.invoke(query))[:top_k]
        return [passage_from_document(doc, rank) for rank, doc in enumerate(documents)]


def passage_from_document(doc: Any, rank: int) -> Passage:
    """A LangChain-style Document as a Passage: id from metadata `id`, else `doc.id`, else `rank`."""
    metadata: dict[str, Any] = dict(doc.metadata) if isinstance(getattr(doc, "metadata", None), Mapping) else {}
    doc_id = next((v for v in (metadata.get("id"), getattr(doc, "id", None)) if v not in (None, "")), rank)
    title = metadata.get("title")
    score = next(
        (float(metadata[k]) for k in _SCORE_KEYS if isinstance(metadata.get(k), int | float)),
        None,
    )
    return Passage(
        id=str(doc_id),
        text=str(doc.page_content),
        title=str(title) if title is not None else "",
        metadata=metadata,
        score=score,
    )
