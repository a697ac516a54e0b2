"""Question-to-context attention from a causal LM, with early exit after the deepest layer needed.

Forward pre-hooks on the selected layers' attention modules read the layer input and the rotary
embeddings, rebuild the post-RoPE queries of the last W positions and the keys of all positions (the
kvpress recipe, algorithms.md §12.2), and hand them to the head-scoring pass. After the deepest selected
layer the forward stops: nothing above it is computed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragctx.forward_hooks import pre_hooks
from ragctx.kernels import attention_mass
from ragctx.models import LanguageModel


class _StopForward(Exception):
    pass


@dataclass(frozen=True)
class HeadSelection:
    """Which layers and query heads the pass reads.

    `heads=None` reads every head of `layers`; otherwise `heads` lists (layer, head) pairs, optionally
    weighted by `weights` (one per pair), and `layers` must cover their layers.
    """

    layers: tuple[int, ...]
    heads: tuple[tuple[int, int], ...] | None = None
    weights: tuple[float, ...] | None = None

    @staticmethod
    def all_layers(lm: LanguageModel) -> HeadSelection:
        return HeadSelection(tuple(range(lm.model.config.num_hidden_layers)))

    @staticmethod
    def of_heads(pairs: Sequence[tuple[int, int]], weights: Sequence[float] | None = None) -> HeadSelection:
        return HeadSelection(
            tuple(sorted({layer for layer, _ in pairs})),
            tuple(pairs),
            tuple(weights) if weights is not None else None,
        )

    def head_weights(self, layer: int, num_heads: int) -> torch.Tensor | None:
        if self.heads is None:
            return None
        w = torch.zeros(num_heads)
        for i, (lay, head) in enumerate(self.heads):
            if lay == layer:
                w[head] = 1.0 if self.weights is None else self.weights[i]
        return w


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, d); cos/sin: (B, T, d)
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


@functools.cache
def _cache_argument_of(forward_params: frozenset[str]) -> str:
    # transformers 5.x renames `past_key_values` to `cache` (the old name is deprecated).
    return "cache" if "cache" in forward_params else "past_key_values"


def _cache_argument(lm: LanguageModel) -> str:
    return _cache_argument_of(frozenset(inspect.signature(lm.model.forward).parameters))


def decoder_layers(lm: LanguageModel) -> Sequence[torch.nn.Module]:
    return lm.model.model.layers  # type: ignore[no-any-return,union-attr]


@dataclass
class QuestionAttention:
    """Attention mass per token (N,), per segment (S,) if segments were given, and per layer."""

    tokens: torch.Tensor
    segments: torch.Tensor | None
    segments_per_layer: dict[int, torch.Tensor]


def capture_qk(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    window: int,
    on_layer: Callable[[int, torch.Tensor, torch.Tensor, float | None], None],
    past: Any = None,
    past_keys: Mapping[int, torch.Tensor] | None = None,
) -> None:
    """Run `input_ids` (1, N) up to the deepest of `layers`; for each of them call
    `on_layer(layer, q (Hq, W, d), k (Hkv, N, d), scale)` with post-RoPE queries of the last W positions
    and keys of all positions. Layers above the deepest are never computed.

    With `past` (a transformers cache holding a prefix the tokens attend to) the keys handed on are the
    prefix's post-RoPE keys `past_keys[layer]` (Hkv, P, d) followed by those of `input_ids`."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("the head-scoring pass takes one sequence: input_ids of shape (1, N)")
    decoder = decoder_layers(lm)
    deepest = max(layers)

    def make_hook(layer_idx: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            cos, sin = kwargs["position_embeddings"]
            b, n, _ = hidden.shape
            hd = module.head_dim
            w = min(window, n)
            q = module.q_proj(hidden[:, -w:]).view(b, w, -1, hd).transpose(1, 2)
            k = module.k_proj(hidden).view(b, n, -1, hd).transpose(1, 2)
            if hasattr(module, "q_norm"):  # Qwen3 / Gemma3 normalise q and k before RoPE
                q, k = module.q_norm(q), module.k_norm(k)
            q = apply_rope(q, cos[:, -w:], sin[:, -w:])
            k = apply_rope(k, cos, sin)
            if past_keys is not None:
                k = torch.cat([past_keys[layer_idx].unsqueeze(0).to(k.dtype), k], dim=2)
            on_layer(layer_idx, q[0], k[0], getattr(module, "scaling", None))
            if layer_idx == deepest:
                raise _StopForward

        return hook

    # The hooks are this call's own (forward_hooks): concurrent calls on the shared model never see them.
    hooks: dict[Any, Callable[..., None]] = {decoder[idx].self_attn: make_hook(idx) for idx in sorted(set(layers))}
    with pre_hooks(hooks), torch.inference_mode(), contextlib.suppress(_StopForward):
        if past is None:
            lm.model(input_ids.to(lm.device), use_cache=False)
        else:
            lm.model(input_ids.to(lm.device), **{_cache_argument(lm): past}, use_cache=True)


def question_attention(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    selection: HeadSelection,
    window: int = 1,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
) -> QuestionAttention:
    """Attention mass per token of `input_ids` (1, N) from its last `window` positions.

    Summed over the selected layers and heads, each row a softmax over all visible keys (so a window
    of W rows through H heads in L layers sums to W*H*L over the sequence).
    """
    total = torch.zeros(input_ids.shape[1], dtype=torch.float32)
    per_layer: dict[int, torch.Tensor] = {}

    def on_layer(layer: int, q: torch.Tensor, k: torch.Tensor, scale: float | None) -> None:
        nonlocal total
        weights = selection.head_weights(layer, q.shape[0])
        mass, seg = attention_mass(
            q, k, head_weights=weights, segment_ids=segment_ids, num_segments=num_segments, scale=scale
        )
        total = total + mass.cpu()
        if seg is not None:
            per_layer[layer] = seg.cpu()

    capture_qk(lm, input_ids, selection.layers, window, on_layer)
    segments = torch.stack(list(per_layer.values())).sum(0) if per_layer else None
    return QuestionAttention(total, segments, per_layer)
