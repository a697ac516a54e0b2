"""The front door: `ragctx.compress()` returns a CompressedContext with provenance, and
`compress_prompt()` answers with the keys LLMLingua users know."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragctx.engine import ContextEngine
from ragctx.state import Budget, PipelineState, render
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


# LongLLMLingua's ranking methods and ragctx's equivalent method (None = the default chain).
_RANK_METHODS: dict[str, str | None] = {
    "longllmlingua": None,
    "llmlingua": None,
    "bm25": "bm25",
    "sentbert": "embed-passages",
}
_QUESTION_CONDITIONS = {"after", "before", "after_condition", "before_condition"}
# LLMLingua's keywords with no ragctx equivalent, and what to do instead.
_NO_EQUIVALENT = {
    "iterative_size": "ragctx compresses in one pass; remove it",
    "force_context_ids": "pass only the passages to keep whole, or compress them separately",
    "force_context_number": "use ragctx.compress(..., method='embed-passages') with a budget",
    "use_sentence_level_filter": "ragctx's default chain always selects whole sentences; choose a method instead",
    "use_context_level_filter": "the default chain selects passages first; method='ehpc' skips that",
    "use_token_level_filter": "ragctx keeps whole sentences (provenance by character offsets); choose a method instead",
    "keep_split": "ragctx keeps passage boundaries (each passage is a numbered document)",
    "keep_first_sentence": "not supported; put that sentence in the instruction",
    "keep_last_sentence": "not supported; put that sentence in the instruction",
    "keep_sentence_number": "not supported",
    "high_priority_bonus": "not supported",
    "context_budget": "use rate or target_token",
    "token_budget_ratio": "use rate or target_token",
    "condition_compare": "not supported; ragctx's methods read the question directly",
    "add_instruction": "not supported; the instruction is placed first, as LLMLingua places it",
    "context_segs": "not supported; pass the passages as the context list",
    "context_segs_rate": "not supported",
    "context_segs_compress": "not supported",
    "target_context": "use target_token",
    "context_level_rate": "use rate",
    "context_level_target_token": "use target_token",
    "force_tokens": "not supported: ragctx keeps whole sentences, never removes single tokens",
    "drop_consecutive": "not supported",
    "force_reserve_digit": "not supported",
    "use_context_level_filter_with_question": "not supported",
    "strict_preserve_uncompressed": "not supported",
    "return_word_label": "see the result's 'ragctx' entry: every kept span with its character offsets",
}


def compress_prompt(
    context: str | Sequence[str],
    instruction: str = "",
    question: str = "",
    rate: float = 0.5,
    target_token: float = -1,
    *,
    condition_in_question: str = "none",
    reorder_context: str = "sort",
    dynamic_context_compression_ratio: float = 0.0,
    rank_method: str = "longllmlingua",
    concate_question: bool = True,
    method: str | None = None,
    engine: ContextEngine | None = None,
    **llmlingua_only: Any,
) -> dict[str, Any]:
    """LLMLingua's `compress_prompt`, positional arguments and keys alike: `compressed_prompt` is the
    instruction, the compressed context and the question joined by blank lines as LLMLingua assembles it;
    `origin_tokens` / `compressed_tokens` count all three; `ratio` (origin / compressed) and `rate`
    (compressed / origin) are numbers, not LLMLingua's strings. `rate` is LLMLingua's default 0.5 unless
    `target_token` (>= 0) is given. LongLLMLingua's keywords map to ragctx's equivalents (`rank_method`
    "bm25" -> method bm25, "sentbert" -> embed-passages, "longllmlingua" -> the default chain) or are refused
    with what to use instead; none is silently ignored. ragctx's own entry `ragctx` holds the kept spans."""
    for key in llmlingua_only:
        if key in _NO_EQUIVALENT:
            raise ValueError(f"compress_prompt: {key!r} has no ragctx equivalent: {_NO_EQUIVALENT[key]}")
        raise TypeError(f"compress_prompt() got an unexpected keyword argument {key!r}")
    if condition_in_question not in _QUESTION_CONDITIONS | {"none"}:
        raise ValueError(
            f"condition_in_question {condition_in_question!r}: expected one of {sorted(_QUESTION_CONDITIONS)} or 'none'"
        )
    # "none" (LLMLingua's default) is accepted: ragctx's question-aware methods read the question either way,
    # and `method="truncate"` is the question-agnostic choice (docs/llmlingua.md).
    if reorder_context not in {"sort", "original"}:
        raise ValueError(
            f"reorder_context {reorder_context!r} has no ragctx equivalent: kept passages come best first "
            "('sort'); for a model-aware order pass stages with attnrank or a reorder-lim-* stage to ContextEngine.run"
        )
    if dynamic_context_compression_ratio:
        raise ValueError(
            "dynamic_context_compression_ratio has no ragctx equivalent: the default chain already gives the "
            "best-ranked passages their whole sentences and drops the rest; leave it 0"
        )
    if rank_method not in _RANK_METHODS:
        raise ValueError(f"rank_method {rank_method!r} is not available offline; known: {sorted(_RANK_METHODS)}")
    chosen = method if method is not None else _RANK_METHODS[rank_method]
    if reorder_context == "original" and chosen in (None, "bm25", "embed-passages"):
        raise ValueError(
            "reorder_context='original' keeps the caller's order, but this method ranks passages best first "
            "(LongLLMLingua's 'sort'); pass reorder_context='sort', or method='budget' to keep the order"
        )
    texts = [context] if isinstance(context, str) else list(context)
    counter = _engine(engine).counter
    extra = counter.count(instruction) + (counter.count(question) if question and concate_question else 0)
    # As LLMLingua counts: `rate` and `target_token` are of the whole prompt, whose instruction and question
    # are kept whole, so the context gets what is left of the target.
    if target_token is not None and target_token >= 0:
        target = int(target_token)
    else:
        if not 0 < rate <= 1:
            raise ValueError(f"rate {rate} is outside the allowed range (0, 1]")
        given = PipelineState(question=question or " ")
        given.set_passages(_passages(texts))
        target = int(rate * (counter.count(render(given.passages)) + extra))
    ctx = compress(
        question or instruction or " ", texts, target_tokens=max(1, target - extra), method=chosen, engine=engine
    )
    parts = [instruction, ctx.text, question if concate_question else ""]
    origin, kept = ctx.tokens_in + extra, ctx.tokens_out + extra
    return {
        "compressed_prompt": "\n\n".join(p for p in parts if p),
        "origin_tokens": origin,
        "compressed_tokens": kept,
        "ratio": origin / kept if kept else float("inf"),
        "rate": kept / origin if origin else 1.0,
        "saving": None,
        "ragctx": ctx.to_dict(),
    }
