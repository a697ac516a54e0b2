"""Per-segment keys and values of the scorer LM, encoded once and reused by every question.

A segment (one passage block) is encoded on its own at positions 0..n-1, and its keys are stored
*before* the rotary embedding, for every layer up to the deepest one scoring needs. At query time
each segment's keys are rotated to the positions it takes in the new prompt (RoPE is a rotation by
an angle proportional to the position, so this is exact), the segments are concatenated into a
transformers cache, and only the question's tokens run through the model, attending to them. The
head-scoring pass then reads the question's queries against all keys.

The approximation: a segment's keys are computed without the other segments in view, only after a
short shared prefix (as in block-attention / CacheBlend-style reuse). `benchmarks/segment_cache.py`
measures what it costs.
Supported: decoder models with full-width RoPE (Llama, Mistral, Qwen2/3, SmolLM, Gemma...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragctx.cache import CachedValue, SegmentCache, content_key
from ragctx.deadline import check_deadline
from ragctx.forward_hooks import pre_hooks
from ragctx.kernels import attention_mass
from ragctx.models import LanguageModel
from ragctx.scoring.lm_attention import HeadSelection, apply_rope, capture_qk, decoder_layers

KIND = "kv"
# Every segment is encoded after this short prefix, and the prefix sits once at the start of the prompt.
# Without it each segment's first token would act as an attention sink (as a sequence's first token
# does) and draw the question's attention; with it the layout matches one prefill of the whole prompt.
SINK_TEXT = "Documents:\n"


class _StopForward(Exception):
    pass


@dataclass
class SegmentKV:
    """Keys (pre-RoPE) and values of one segment for layers 0..depth: each (depth+1, Hkv, n, d)."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


def model_fingerprint(lm: LanguageModel) -> str:
    """Model id + config + a checksum of some weights + tokenizer: a retrained model at the same path
    or another tokenizer never reads this model's entries."""
    cfg = lm.model.config.to_json_string(use_diff=False)
    emb: torch.Tensor = lm.model.get_input_embeddings().weight.detach()  # type: ignore[operator]
    h = hashlib.sha256()
    h.update(lm.name.encode())
    h.update(cfg.encode())
    h.update(f"{float(emb[:64].double().sum()):.10e}:{float(emb[-64:].double().sum()):.10e}".encode())
    h.update(f"{type(lm.tokenizer).__name__}:{len(lm.tokenizer)}".encode())
    return h.hexdigest()[:32]


def rope_tables(lm: LanguageModel, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (1, T, d) of the model's rotary embedding at `positions` (T,)."""
    rotary: Any = getattr(lm.model.model, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{lm.name}: the segment KV cache needs a model with rotary position embeddings")
    dtype = next(lm.model.parameters()).dtype
    probe = torch.empty(0, dtype=dtype, device=lm.device)
    cos, sin = rotary(probe, positions.to(lm.device)[None])
    return cos, sin


class SegmentKVCache:
    """Keys/values of segments for one scorer LM, through a SegmentCache (in process or Redis)."""

    def __init__(
        self,
        lm: LanguageModel,
        cache: SegmentCache,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.lm = lm
        self.cache = cache
        self.dtype = dtype
        self.owner = model_fingerprint(lm)
        self.prefix = list(lm.tokenizer.encode(SINK_TEXT, add_special_tokens=False))
        self._prefix_kv: dict[int, SegmentKV] = {}
        cfg = lm.model.config
        self._rope_meta = json.loads(json.dumps(getattr(cfg, "rope_parameters", None) or {}, default=str))

    # ---- segments -------------------------------------------------------------------------------

    def segments(self, token_ids: Sequence[Sequence[int]], depth: int) -> tuple[list[SegmentKV], int]:
        """KV of each segment for layers 0..depth, from the cache or computed (misses written
        back; each encoded on its own). Returns the segments and the number of cache hits."""
        keys = [self.key(ids, depth) for ids in token_ids]
        found = self.cache.get_many(keys, KIND, self.owner)
        out: list[SegmentKV | None] = []
        wrong: list[str] = []
        for key, ids, value in zip(keys, token_ids, found, strict=True):
            kv = self._from_value(value, len(ids), depth) if value is not None else None
            if value is not None and kv is None:
                wrong.append(key)
            out.append(kv)
        self.cache.discard(wrong, "shape does not match the segment")
        hits = sum(kv is not None for kv in out)
        missing = [i for i, kv in enumerate(out) if kv is None]
        if missing:
            fresh = self.encode([token_ids[i] for i in missing], depth, self.prefix)
            for i, kv in zip(missing, fresh, strict=True):
                out[i] = kv
            self.cache.put_many({keys[i]: self._to_value(out[i], depth) for i in missing})  # type: ignore[arg-type]
        return [kv for kv in out if kv is not None], hits

    def key(self, token_ids: Sequence[int], depth: int) -> str:
        prefix = ",".join(map(str, self.prefix))
        return content_key(KIND, self.owner, token_ids, extra=f"layers=0-{depth};prefix={prefix}")

    def prefix_kv(self, depth: int) -> SegmentKV:
        if depth not in self._prefix_kv:
            self._prefix_kv[depth] = self.encode([self.prefix], depth)[0]
        return self._prefix_kv[depth]

    def _to_value(self, kv: SegmentKV, depth: int) -> CachedValue:
        meta = {"layers": [0, depth], "positions": "pre-rope", "rope": self._rope_meta}
        return CachedValue(KIND, self.owner, {"k": kv.keys, "v": kv.values}, meta)

    def _from_value(self, value: CachedValue, n: int, depth: int) -> SegmentKV | None:
        k, v = value.tensors.get("k"), value.tensors.get("v")
        if k is None or v is None or k.shape != v.shape or k.dim() != 4:
            return None
        if k.shape[0] != depth + 1 or k.shape[2] != n:
            return None
        return SegmentKV(k, v)

    def encode(self, token_ids: Sequence[Sequence[int]], depth: int, prefix: Sequence[int] = ()) -> list[SegmentKV]:
        """Encode segments independently, each after `prefix` (whose keys are not kept), stopping after
        layer `depth`.

        One forward per segment, at exactly its own shape: batched and padded, a segment's GEMMs would
        take shapes from its neighbours, and CPU kernels pick their blocking (so their rounding) by
        shape. Per segment, an entry is the same bytes whenever and with whatever it is computed, so
        a content-addressed key always holds one value (tests check it bit for bit)."""
        out = []
        for ids in token_ids:
            check_deadline()
            out.append(self._encode_one([*prefix, *ids], len(prefix), depth))
        return out

    def _encode_one(self, ids: list[int], skip: int, depth: int) -> SegmentKV:
        lm = self.lm
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            b, n, _ = hidden.shape
            k = module.k_proj(hidden).view(b, n, -1, module.head_dim).transpose(1, 2)
            if hasattr(module, "k_norm"):
                k = module.k_norm(k)
            v = module.v_proj(hidden).view(b, n, -1, module.head_dim).transpose(1, 2)
            keys.append(k[0, :, skip:].to(self.dtype).cpu())
            values.append(v[0, :, skip:].to(self.dtype).cpu())
            if len(keys) == depth + 1:
                raise _StopForward

        layers: Any = decoder_layers(lm)
        hooks = {layers[i].self_attn: hook for i in range(depth + 1)}
        with pre_hooks(hooks), torch.inference_mode(), contextlib.suppress(_StopForward):
            lm.model(torch.tensor([ids], device=lm.device), use_cache=False)
        return SegmentKV(torch.stack(keys).contiguous(), torch.stack(values).contiguous())

    # ---- the query path -------------------------------------------------------------------------

    def question_attention(
        self,
        segment_ids: Sequence[Sequence[int]],
        question_ids: Sequence[int],
        selection: HeadSelection,
    ) -> tuple[torch.Tensor, int]:
        """Attention mass (N_context + N_question,) that the question's tokens pay, through `selection`,
        to every token of the segments laid out one after another (after the sink prefix, whose mass
        is left out) and to the question itself. Returns the mass and the number of cache hits."""
        depth = max(selection.layers)
        kvs, hits = self.segments(segment_ids, depth)
        kvs = [self.prefix_kv(depth), *kvs]
        lm = self.lm
        dtype = next(lm.model.parameters()).dtype
        n_ctx = sum(kv.length for kv in kvs)
        cos, sin = rope_tables(lm, torch.arange(n_ctx))
        layer_kv = []
        rotated: dict[int, torch.Tensor] = {}
        for layer in range(depth + 1):
            k = torch.cat([kv.keys[layer] for kv in kvs], dim=1).to(lm.device, dtype)[None]
            v = torch.cat([kv.values[layer] for kv in kvs], dim=1).to(lm.device, dtype)[None]
            k = apply_rope(k, cos, sin)
            layer_kv.append((k, v))
            if layer in selection.layers:
                rotated[layer] = k[0]
        from transformers import DynamicCache

        past = DynamicCache(ddp_cache_data=layer_kv)
        total = torch.zeros(n_ctx + len(question_ids), dtype=torch.float32)
        w = len(question_ids)

        def on_layer(layer: int, q: torch.Tensor, k: torch.Tensor, scale: float | None) -> None:
            nonlocal total
            weights = selection.head_weights(layer, q.shape[0])
            mass, _ = attention_mass(q, k, head_weights=weights, scale=scale)
            total = total + mass.cpu()

        capture_qk(lm, torch.tensor([list(question_ids)]), selection.layers, w, on_layer, past, rotated)
        return total[len(self.prefix) :], hits
