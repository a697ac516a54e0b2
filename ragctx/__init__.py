"""ragctx: the context layer for retrieval-augmented generation."""

from ragctx.types import CompressedContext, Passage, PassageResult, Span, StageStats

__all__ = ["CompressedContext", "Passage", "PassageResult", "Span", "StageStats"]
__version__ = "0.1.0"
