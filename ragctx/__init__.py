"""ragctx: the context layer for retrieval-augmented generation.

    import ragctx
    ctx = ragctx.compress("who designed new earswick", ["New Earswick ... Raymond Unwin ..."], rate=0.1)
    ctx.text, ctx.passages  # kept spans carry passage ids and character offsets

The engine and models load on first use, so `import ragctx` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragctx.types import CompressedContext, Passage, PassageResult, Span, StageStats
from ragctx.version import __version__

if TYPE_CHECKING:
    from ragctx.engine import ContextEngine
    from ragctx.frontdoor import compress, compress_prompt
    from ragctx.settings import Settings, load_settings

__all__ = [
    "__version__",
    "CompressedContext",
    "ContextEngine",
    "Passage",
    "PassageResult",
    "Settings",
    "Span",
    "StageStats",
    "compress",
    "compress_prompt",
    "load_settings",
]

_LAZY = {
    "compress": "ragctx.frontdoor",
    "compress_prompt": "ragctx.frontdoor",
    "ContextEngine": "ragctx.engine",
    "Settings": "ragctx.settings",
    "load_settings": "ragctx.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'ragctx' has no attribute {name!r}")
