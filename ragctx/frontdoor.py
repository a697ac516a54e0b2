"""The front door: `ragctx.compress()` returns a CompressedContext with provenance, and
`compress_prompt()` answers with the keys LLMLingua users know."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragctx.engine import ContextEngine
from ragctx.state import Budget
from ragctx.types import CompressedContext, Passage

_default_engine: ContextEngine | None = None


def _engine(engine: ContextEngine | None) -> ContextEngine:
    global _default_engine
    if engine is not None:
        return engine
    if _default_engine is None:
        _default_engine = ContextEngine()  # settings from RAGCTX_* / the TOML file; models load once
    return _default_engine


def _passages(items: Sequence[Passage | str | dict[str, Any]]) -> list[Passage]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Passage):
            out.append(item)
        elif isinstance(item, str):
            out.append(Passage(str(i), item))
        else:
            extra = {k: v for k, v in item.items() if k not in {"id", "title", "text"}}
            out.append(Passage(str(item.get("id", i)), str(item["text"]), str(item.get("title") or ""), extra))
    return out


def compress(
    question: str,
    passages: Sequence[Passage | str | dict[str, Any]],
    *,
    target_tokens: int | None = None,
    rate: float | None = None,
    threshold: float | None = None,
    method: str | None = None,
    engine: ContextEngine | None = None,
) -> CompressedContext:
    """Compress caller-given passages (strings, dicts with `text`, or Passages), through the same engine
    and stages as the CLI and the service: passages given replace retrieval, the other configured stages
    (dedup) run. `method` None = the default chain; no `target_tokens`, `rate` or `threshold` = the
    default rate. Threshold and budget together: the threshold selects first, then the budget caps.
    An empty `passages` gives an empty context whose stats say why.
    """
    asked = target_tokens is not None or rate is not None or threshold is not None
    budget = Budget(tokens=target_tokens, rate=rate, threshold=threshold) if asked else None  # None: the default
    return _engine(engine).run(question, _passages(passages), method=method, budget=budget)


def compress_prompt(
    context: str | Sequence[str],
    question: str = "",
    *,
    rate: float | None = None,
    target_token: int | None = None,
    method: str | None = None,
    engine: ContextEngine | None = None,
    **_: Any,
) -> dict[str, Any]:
    """LLMLingua-compatible: `compressed_prompt`, `origin_tokens`, `compressed_tokens`, `ratio`
    (as a number, origin / compressed), `rate` (compressed / origin), plus ragctx's own `ragctx` entry.
    LLMLingua-only keyword arguments are accepted and ignored."""
    texts = [context] if isinstance(context, str) else list(context)
    if target_token is not None and target_token < 0:  # LLMLingua's "no target" value
        target_token = None
    ctx = compress(question or " ", texts, target_tokens=target_token, rate=rate, method=method, engine=engine)
    origin, kept = ctx.tokens_in, ctx.tokens_out
    return {
        "compressed_prompt": ctx.text,
        "origin_tokens": origin,
        "compressed_tokens": kept,
        "ratio": origin / kept if kept else float("inf"),
        "rate": kept / origin if origin else 1.0,
        "saving": None,
        "ragctx": ctx.to_dict(),
    }
