"""Retrieval: corpus loaders, the Retriever interface and the persistent FAISS index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragctx.indexes.base import LangChainRetriever, Retriever
from ragctx.indexes.loaders import DocumentFormatError, expand_inputs, read_documents

if TYPE_CHECKING:
    from ragctx.indexes.faiss_index import AddResult, FaissIndex

__all__ = [
    "AddResult",
    "DocumentFormatError",
    "FaissIndex",
    "LangChainRetriever",
    "Retriever",
    "expand_inputs",
    "read_documents",
]


def __getattr__(name: str) -> Any:
    # FAISS is imported only when the index itself is wanted, not by code that only needs the interface.
    if name in ("AddResult", "FaissIndex"):
        from ragctx.indexes import faiss_index

        return getattr(faiss_index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
