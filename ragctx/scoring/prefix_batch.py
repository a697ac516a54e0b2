"""Next-token distributions for many prompts that share a prefix: the prefix is encoded once.

Prompts (token ids) are split into their longest common prefix and per-prompt suffixes. The prefix's KV
cache is computed once and repeated across a batch of suffixes, which are left-padded so that every row
ends at the last column; explicit position ids keep each suffix's positions contiguous with the prefix,
and the attention mask hides the padding. The result equals encoding each prompt on its own (up to float
rounding), at the cost of the prefix once plus the suffixes.

`last_token_logits_many` does the same for several independent calls at once (the service's micro-batcher
merges concurrent requests' calls): each call keeps its own prefix; the prefixes are left-padded into one
forward and every suffix row reads its own call's prefix cache. `last_token_logits` is the one entry point
of the pipeline: it runs directly, unless the running thread was given a batch route
(`routed_through`), in which case the call is handed to the batcher, which runs
`last_token_logits_many` on all the calls waiting: one code path, batched or not.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any

import torch

from ragctx.forward_hooks import pre_hooks
from ragctx.models import LanguageModel


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences)
    i = 0
    while i < n and all(s[i] == first[i] for s in sequences):
        i += 1
    return i


@cache
def _cache_kwarg(model_cls: Any) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept both.
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: object) -> object:
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


# Where `last_token_logits` calls go instead of the model: `route(lm, prompts) -> (B, V) logits`.
BatchRoute = Callable[[LanguageModel, list[list[int]]], torch.Tensor]


# A context variable, not a global: only the threads (requests) the service routes use the batcher, and
# several services (tests) in one process do not see each other's.
_route: ContextVar[BatchRoute | None] = ContextVar("ragctx_lm_batch_route", default=None)


@contextmanager
def routed_through(route: BatchRoute | None) -> Iterator[None]:
    """Within this block (this thread / task), `last_token_logits` calls go through `route`."""
    token = _route.set(route)
    try:
        yield
    finally:
        _route.reset(token)


def _check(sequences: Sequence[Sequence[int]]) -> None:
    if any(len(s) == 0 for s in sequences):
        raise ValueError("empty prompt")


def last_token_logits(lm: LanguageModel, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """Logits (B, V) at the last position of every sequence, in fp32 on the CPU."""
    if not sequences:
        return torch.empty(0)
    _check(sequences)
    route = _route.get()
    if route is not None:
        return route(lm, [list(s) for s in sequences])
    return last_token_logits_many(lm, [sequences], batch_size)[0]


def last_token_logits_many(
    lm: LanguageModel, calls: Sequence[Sequence[Sequence[int]]], batch_size: int = 16
) -> list[torch.Tensor]:
    """`last_token_logits` of every call in `calls`, computed together: one (B_i, V) tensor per call.

    Calls are packed in order into groups of at most `batch_size` prompts (a larger call is a group on
    its own); a group encodes its calls' prefixes in one left-padded forward, then its suffix rows in
    chunks of `batch_size`, each row attending to its own call's prefix.
    """
    return _last_token_outputs(lm, calls, batch_size, None)


def last_token_states(
    lm: LanguageModel, sequences: Sequence[Sequence[int]], layer: int, batch_size: int = 16
) -> torch.Tensor:
    """The residual stream (B, hidden) entering decoder layer `layer` at the last position of every
    sequence, in fp32 on the CPU: what a probe at that depth reads. Each suffix forward stops there, so
    the layers above are never computed (the shared prefix, encoded once, runs in full)."""
    if not sequences:
        return torch.empty(0)
    _check(sequences)
    return _last_token_outputs(lm, [sequences], batch_size, layer)[0]


def _last_token_outputs(
    lm: LanguageModel, calls: Sequence[Sequence[Sequence[int]]], batch_size: int, layer: int | None
) -> list[torch.Tensor]:
    for seqs in calls:
        _check(seqs)
    out: list[torch.Tensor] = [torch.empty(0)] * len(calls)
    group: list[int] = []
    rows = 0
    for i, seqs in enumerate(calls):
        if not seqs:
            continue
        if group and rows + len(seqs) > batch_size:
            _run_group(lm, [calls[j] for j in group], batch_size, out, group, layer)
            group, rows = [], 0
        group.append(i)
        rows += len(seqs)
    if group:
        _run_group(lm, [calls[j] for j in group], batch_size, out, group, layer)
    return out


class _StopForward(Exception):
    """Raised by the hook that has read the state it needs: the layers above are skipped."""


def _run_group(
    lm: LanguageModel,
    calls: Sequence[Sequence[Sequence[int]]],
    batch_size: int,
    out: list[torch.Tensor],
    where: list[int],
    layer: int | None = None,
) -> None:
    """Logits at the last position of every row, or with `layer` the state entering that layer."""
    model = lm.model
    kw = _cache_kwarg(type(model))  # type: ignore[arg-type]
    device = lm.device
    pad = int(lm.tokenizer.pad_token_id or 0)
    # Every row keeps at least one suffix token: its last token is where the logits are read.
    prefix_lens = [min(common_prefix_length(seqs), min(len(s) for s in seqs) - 1) for seqs in calls]
    width_p = max(prefix_lens)
    # Prefix columns per call: left-padded to the longest prefix, the padding masked out.
    prefix_mask = torch.zeros((len(calls), width_p), dtype=torch.long)
    for c, p in enumerate(prefix_lens):
        prefix_mask[c, width_p - p :] = 1
    # Suffix rows of all calls, flattened: (call index, suffix tokens).
    flat = [(c, list(s[prefix_lens[c] :])) for c, seqs in enumerate(calls) for s in seqs]
    logits: list[torch.Tensor] = []
    with torch.inference_mode():
        prefix_cache = None
        if width_p > 0:
            ids = torch.full((len(calls), width_p), pad, dtype=torch.long)
            for c, p in enumerate(prefix_lens):
                if p:
                    ids[c, width_p - p :] = torch.tensor(list(calls[c][0][:p]))
            prefix_cache = _returned_cache(
                model(
                    ids.to(device),
                    attention_mask=prefix_mask.to(device),
                    position_ids=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0).to(device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            )
        # Rows of similar length share a chunk (less padding); the logits go back in the callers' order.
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1]))
        for start in range(0, len(order), batch_size):
            chunk = [flat[i] for i in order[start : start + batch_size]]
            owners = torch.tensor([c for c, _ in chunk])
            b, width = len(chunk), max(len(s) for _, s in chunk)
            ids = torch.full((b, width), pad, dtype=torch.long)
            mask = torch.zeros((b, width), dtype=torch.long)
            for i, (_, s) in enumerate(chunk):
                ids[i, width - len(s) :] = torch.tensor(s)
                mask[i, width - len(s) :] = 1
            offsets = torch.tensor([prefix_lens[c] for c, _ in chunk]).unsqueeze(1)
            positions = offsets + (mask.cumsum(dim=1) - 1).clamp(min=0)
            kwargs: dict[str, object] = {}
            if prefix_cache is not None:
                past = copy.deepcopy(prefix_cache)  # the forward appends to it
                past.batch_select_indices(owners.to(device))  # type: ignore[attr-defined]
                kwargs[kw] = past
            full_mask = torch.cat([prefix_mask[owners], mask], dim=1)
            run = functools.partial(
                model,
                ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=positions.to(device),
                use_cache=prefix_cache is not None,
                logits_to_keep=1,
                **kwargs,
            )
            if layer is None:
                logits.append(run().logits[:, -1].float().cpu())
            else:
                logits.append(_state_entering(model, layer, run))
    stacked = torch.cat(logits, dim=0)
    merged = torch.empty_like(stacked)
    merged[torch.tensor(order)] = stacked
    start = 0
    for c, seqs in enumerate(calls):
        out[where[c]] = merged[start : start + len(seqs)]
        start += len(seqs)


def _state_entering(model: Any, layer: int, run: Callable[[], Any]) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden[:, -1].float().cpu())
        raise _StopForward

    decoder = model.model.layers
    if not 0 <= layer < len(decoder):
        raise ValueError(f"layer {layer} is outside the model's {len(decoder)} decoder layers")
    # The hook is this call's own (forward_hooks): concurrent forwards of the shared model never see it.
    with pre_hooks({decoder[layer]: capture}), contextlib.suppress(_StopForward):
        run()
    return seen[0]


def logits_for_calls(
    calls: Sequence[tuple[LanguageModel, list[list[int]]]], batch_size: int = 32
) -> list[torch.Tensor]:
    """What a batcher runs: `(lm, prompts)` calls, possibly of several LMs; one logits tensor per call."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(calls)
    by_lm: dict[int, list[int]] = {}
    for i, (lm, _) in enumerate(calls):
        by_lm.setdefault(id(lm), []).append(i)
    for idxs in by_lm.values():
        lm = calls[idxs[0]][0]
        for i, logits in zip(idxs, last_token_logits_many(lm, [calls[i][1] for i in idxs], batch_size), strict=True):
            out[i] = logits
    return out
