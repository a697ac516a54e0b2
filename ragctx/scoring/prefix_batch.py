"""Next-token distributions for many prompts that share a prefix: the prefix is encoded once.

Prompts (token ids) are split into their longest common prefix and per-prompt suffixes. The prefix's KV
cache is computed once and repeated across a batch of suffixes, which are left-padded so that every row
ends at the last column; explicit position ids keep each suffix's positions contiguous with the prefix,
and the attention mask hides the padding. The result equals encoding each prompt on its own (up to float
rounding), at the cost of the prefix once plus the suffixes.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch

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


def last_token_logits(lm: LanguageModel, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """Logits (B, V) at the last position of every sequence, in fp32 on the CPU."""
    if not sequences:
        return torch.empty(0)
    if any(len(s) == 0 for s in sequences):
        raise ValueError("empty prompt")
    model = lm.model
    kw = _cache_kwarg(type(model))  # type: ignore[arg-type]
    # Every row keeps at least one suffix token: its last token is where the logits are read.
    p = min(common_prefix_length(sequences), min(len(s) for s in sequences) - 1)
    device = lm.device
    pad = int(lm.tokenizer.pad_token_id or 0)
    outputs = []
    with torch.inference_mode():
        prefix_cache = None
        if p > 0:
            prefix = torch.tensor([list(sequences[0][:p])], device=device)
            prefix_cache = _returned_cache(model(prefix, use_cache=True, logits_to_keep=1))
        for start in range(0, len(sequences), batch_size):
            chunk = [list(s[p:]) for s in sequences[start : start + batch_size]]
            b, width = len(chunk), max(len(s) for s in chunk)
            ids = torch.full((b, width), pad, dtype=torch.long)
            mask = torch.zeros((b, width), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, width - len(s) :] = torch.tensor(s)
                mask[i, width - len(s) :] = 1
            positions = p + (mask.cumsum(dim=1) - 1).clamp(min=0)
            kwargs: dict[str, object] = {}
            if prefix_cache is not None:
                past = copy.deepcopy(prefix_cache)
                past.batch_repeat_interleave(b)  # type: ignore[attr-defined]
                kwargs[kw] = past
            full_mask = torch.cat([torch.ones((b, p), dtype=torch.long), mask], dim=1)
            out = model(
                ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=positions.to(device),
                use_cache=prefix_cache is not None,
                logits_to_keep=1,
                **kwargs,
            )
            outputs.append(out.logits[:, -1].float().cpu())
    return torch.cat(outputs, dim=0)
