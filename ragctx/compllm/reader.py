"""Answering from concept embeddings: the local target model reads the context CompLLM compressed.

Each passage is cut into segments of S tokens; each segment's concept embeddings come from the segment
cache (kind `concepts`, keyed by the adapter's fingerprint and the segment's tokens) or are computed in
one batch with the other misses and written back. The prompt is the reader's chat prompt with the
context replaced by the concatenated concept embeddings (`inputs_embeds`); instructions and question
stay tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragctx.cache import CachedValue, SegmentCache, content_key
from ragctx.compllm.compressor import CompLLM, cut
from ragctx.compllm.data import block
from ragctx.compllm.prompt import embed, prompt_parts
from ragctx.models import LanguageModel
from ragctx.types import Passage

KIND = "concepts"


@dataclass
class SoftPrompt:
    embeds: torch.Tensor  # (1, T, d)
    context_tokens: int  # tokens of the context before compression
    context_embeddings: int  # concept embeddings that replaced them
    cache_hits: int
    segments: int


class CompressedReader:
    """The local reader over CompLLM concept embeddings (and over plain tokens, for comparison)."""

    def __init__(
        self, lm: LanguageModel, comp: CompLLM, cache: SegmentCache | None = None, max_new_tokens: int = 12
    ) -> None:
        self.lm = lm
        self.comp = comp
        self.cache = cache
        self.max_new_tokens = max_new_tokens
        self.owner = comp.fingerprint()

    def passage_tokens(self, passages: Sequence[Passage]) -> list[list[int]]:
        tok: Any = self.lm.tokenizer
        return [list(tok.encode(block(p.title, p.text), add_special_tokens=False)) for p in passages]

    @torch.no_grad()
    def concepts(self, segments: Sequence[list[int]]) -> tuple[list[torch.Tensor], int]:
        """Concept embeddings of each segment, from the cache where present; returns them and the hits."""
        cfg = self.comp.config
        extra = f"S={cfg.segment_tokens};C={cfg.rate}"
        keys = [content_key(KIND, self.owner, s, extra) for s in segments]
        found = self.cache.get_many(keys, KIND, self.owner) if self.cache else [None] * len(keys)
        out: list[torch.Tensor | None] = []
        wrong = []
        for key, seg, value in zip(keys, segments, found, strict=True):
            ces = value.tensors.get("ce") if value is not None else None
            if ces is not None and tuple(ces.shape) != (self.comp.concepts_for(len(seg)), self.comp.hidden_size):
                wrong.append(key)
                ces = None
            out.append(ces)
        if self.cache:
            self.cache.discard(wrong, "concept embeddings of the wrong shape")
        hits = sum(c is not None for c in out)
        missing = [i for i, c in enumerate(out) if c is None]
        if missing:
            fresh = self.comp(self.lm, [segments[i] for i in missing])
            for i, ces in zip(missing, fresh, strict=True):
                # Cached in fp32: a cached segment must equal a fresh one bit for bit.
                out[i] = ces.float().cpu()
            if self.cache:
                self.cache.put_many({keys[i]: CachedValue(KIND, self.owner, {"ce": out[i]}) for i in missing})  # type: ignore[dict-item]
        return [c for c in out if c is not None], hits

    @torch.no_grad()
    def soft_prompt(self, question: str, passages: Sequence[Passage], compress: bool = True) -> SoftPrompt:
        before, after = prompt_parts(self.lm, question)
        tokens = self.passage_tokens(passages)
        dtype = next(self.lm.model.parameters()).dtype
        n_tokens = sum(len(t) for t in tokens)
        if compress:
            segments = [s for t in tokens for s in cut(t, self.comp.config.segment_tokens)]
            ces, hits = self.concepts(segments)
            context = torch.cat(ces).to(self.lm.device, dtype) if ces else embed(self.lm, [])
            n_ctx, n_seg = int(context.shape[0]), len(segments)
        else:
            context = embed(self.lm, [t for p in tokens for t in p])
            hits, n_ctx, n_seg = 0, n_tokens, 0
        embeds = torch.cat([embed(self.lm, before), context, embed(self.lm, after)])[None]
        return SoftPrompt(embeds, n_tokens, n_ctx, hits, n_seg)

    @torch.no_grad()
    def generate(self, prompt: SoftPrompt) -> str:
        tok: Any = self.lm.tokenizer
        mask = torch.ones(prompt.embeds.shape[:2], dtype=torch.long, device=self.lm.device)
        out: Any = self.lm.model.generate(  # type: ignore[operator]
            inputs_embeds=prompt.embeds,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        # With inputs_embeds only, generate returns just the new tokens.
        text: Any = tok.decode(out[0], skip_special_tokens=True)
        return str(text).strip().split("\n")[0]

    def answer(self, question: str, passages: Sequence[Passage], compress: bool = True) -> tuple[str, SoftPrompt]:
        prompt = self.soft_prompt(question, passages, compress)
        return self.generate(prompt), prompt
