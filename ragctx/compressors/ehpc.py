"""EHPC: evaluator-head prompt compression (Fei et al., NeurIPS 2025; algorithms.md §7).

The scorer LM reads the context followed by the question, only up to the deepest evaluator head (early
exit). The attention that the question's tokens pay to each context token through the evaluator heads
is pooled with a small window (so neighbouring tokens keep each other) and summed (or averaged) over
each unit (token, word or sentence); the shared selection keeps the best units within the budget, in order.
Passages are scored in chunks of at most `chunk_tokens` so memory stays bounded on long contexts.
With a SegmentKVCache each passage's keys are encoded once and reused by later questions (only the
question then runs through the model); without one, each chunk is one full prefill.

Attention alone is a poor judge of which passage matters: it favours whatever sits nearest the question
(on NQ-20, sentences of a distractor in the last slot get more mass than the answer passage's sentences
two slots back). When an earlier stage has scored the passages (the embedding prefilter of
`embed-passages+ehpc` records each passage's cosine to the question), a unit's score is
`log(attention) + passage_prior * cosine`: attention weighted by the passage prior
`exp(passage_prior * cosine)`. Summing rather than averaging a sentence's attention favours sentences
that carry more, which at small budgets more often hold the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ragctx.compressors.embed_passages import EMBEDDING_SCORE
from ragctx.compressors.selection import Granularity, Unit
from ragctx.deadline import check_deadline
from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState

if TYPE_CHECKING:
    import torch

    from ragctx.compressors.evaluator_heads import EvaluatorHeads
    from ragctx.models import LanguageModel
    from ragctx.scoring.segment_kv import SegmentKVCache

# torch and the attention machinery load when the scorer runs (the declaration below is read by every
# command), so they are imported in the methods that use them.


class EHPCSettings(MethodSettings):
    granularity: Literal["token", "word", "sentence"] = Field(
        default="sentence", description="What EHPC keeps or drops: tokens, words or sentences."
    )
    pool: int = Field(default=5, ge=1, description="Window of the average pooling over token scores.")
    unit_score: Literal["sum", "mean"] = Field(
        default="sum",
        description="A word's or sentence's score is the total (`sum`) or mean (`mean`) pooled attention of its "
        "tokens.",
    )
    passage_prior: float = Field(
        default=10.0,
        ge=0.0,
        description="After a passage scorer (`embed-passages+ehpc`): unit score = log(attention) + this times the "
        "passage's embedding cosine to the question; 0 = attention only.",
    )
    chunk_tokens: int = Field(
        default=4096, ge=256, description="Passages are scored in chunks of at most this many tokens."
    )


@dataclass
class EHPCScorer:
    lm: LanguageModel
    heads: EvaluatorHeads
    granularity: Granularity = "sentence"
    pool: int = 5
    chunk_tokens: int = 4096
    segments: SegmentKVCache | None = None
    # Pooled attention of a unit: the total over its tokens (`sum`) or their mean (`mean`).
    unit_score: Literal["sum", "mean"] = "sum"
    # Weight of the passage relevance an earlier stage recorded (PassageResult.scores["embedding"]);
    # 0 = attention only.
    passage_prior: float = 10.0
    # Appended after the question, and how many last positions attend (None = the question's tokens):
    # for analyses of the answering position's attention (benchmarks/ehpc_analysis.py).
    query_suffix: str = ""
    query_window: int | None = None
    name: str = "ehpc"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        scores = self.attention_scores(state, units)
        prior = self.passage_relevance(state, units)
        if prior is None or self.passage_prior == 0:
            return scores
        state.notes["passage_prior"] = EMBEDDING_SCORE
        return [
            math.log(max(s, 1e-12)) + self.passage_prior * prior[u.passage_index]
            for s, u in zip(scores, units, strict=True)
        ]

    @staticmethod
    def passage_relevance(state: PipelineState, units: Sequence[Unit]) -> dict[int, float] | None:
        """The relevance an earlier stage gave every passage that has units, or None if any lacks it."""
        out: dict[int, float] = {}
        for u in units:
            value = state.passages[u.passage_index].scores.get(EMBEDDING_SCORE)
            if value is None:
                return None
            out[u.passage_index] = value
        return out

    def attention_scores(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        """Pooled evaluator-head attention per unit (summed or averaged over its tokens)."""
        by_passage: dict[int, list[int]] = {}
        for i, u in enumerate(units):
            by_passage.setdefault(u.passage_index, []).append(i)
        tok = self.lm.tokenizer
        sizes = {p: len(tok.encode(state.passages[p].passage.text, add_special_tokens=False)) for p in by_passage}
        scores = [0.0] * len(units)
        chunk: list[int] = []
        used = 0
        for p in sorted(by_passage):
            if chunk and used + sizes[p] > self.chunk_tokens:
                self._score_chunk(state, units, by_passage, chunk, scores)
                chunk, used = [], 0
            chunk.append(p)
            used += sizes[p]
        if chunk:
            self._score_chunk(state, units, by_passage, chunk, scores)
        return scores

    def _score_chunk(
        self,
        state: PipelineState,
        units: Sequence[Unit],
        by_passage: dict[int, list[int]],
        passages: list[int],
        scores: list[float],
    ) -> None:
        from ragctx.compressors.evaluator_heads import QUESTION_PREFIX

        check_deadline()
        layout = layout_chunk(state, units, by_passage, passages)
        question = QUESTION_PREFIX + state.question + self.query_suffix
        if self.segments is not None:
            mass, offsets, hits = self._mass_cached(layout.blocks, question)
            state.notes["cache_hits"] = int(state.notes.get("cache_hits", 0)) + hits  # type: ignore[call-overload]
            state.notes["cache_misses"] = int(state.notes.get("cache_misses", 0)) + len(layout.blocks) - hits  # type: ignore[call-overload]
        else:
            mass, offsets = self.prefill_mass(layout.context, question)
        for i, value in self.unit_scores(mass, offsets, layout.unit_ranges).items():
            scores[i] = value

    def unit_scores(
        self, mass: torch.Tensor, offsets: list[tuple[int, int]], unit_ranges: dict[int, tuple[int, int]]
    ) -> dict[int, float]:
        """Each unit's score from the token mass: pooled over `pool` tokens, then summed or averaged over
        the tokens overlapping the unit's character range (two pointers over sorted ranges)."""
        if self.pool > 1:
            import torch

            pad = self.pool // 2
            mass = torch.nn.functional.avg_pool1d(
                mass[None, None], self.pool, stride=1, padding=pad, count_include_pad=False
            )[0, 0][: len(offsets)]
        out: dict[int, float] = {}
        t = 0
        for i in sorted(unit_ranges, key=lambda i: unit_ranges[i]):
            a, b = unit_ranges[i]
            while t < len(offsets) and offsets[t][1] <= a:
                t += 1
            j, total, n = t, 0.0, 0
            while j < len(offsets) and offsets[j][0] < b:
                if offsets[j][1] > a:
                    total += float(mass[j])
                    n += 1
                j += 1
            out[i] = total if self.unit_score == "sum" else total / n if n else 0.0
        return out

    def prefill_mass(self, context: str, question: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One prefill of sink prefix + context + question: the evaluator heads' attention mass per token
        of context + question, and each token's character range (the same layout as the cached path).
        The attending positions are the question's tokens, or the last `query_window` ones."""
        import torch

        from ragctx.scoring.lm_attention import HeadSelection, question_attention
        from ragctx.scoring.segment_kv import SINK_TEXT

        enc = self.lm.tokenizer(SINK_TEXT + context + question, add_special_tokens=False, return_offsets_mapping=True)
        skip = sum(1 for _, b in enc["offset_mapping"] if b <= len(SINK_TEXT))
        offsets = [(a - len(SINK_TEXT), b - len(SINK_TEXT)) for a, b in enc["offset_mapping"][skip:]]
        selection = HeadSelection.of_heads(self.heads.heads, self.heads.scores)
        window = self.query_window or max(1, sum(1 for a, _ in offsets if a >= len(context)))
        mass = question_attention(self.lm, torch.tensor([enc["input_ids"]]), selection, window=window).tokens
        return mass[skip:], offsets

    def _mass_cached(self, blocks: list[str], question: str) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
        """Each block is a cached segment (keys encoded once, re-rotated to its place); only the
        question runs through the model."""
        from ragctx.scoring.lm_attention import HeadSelection

        assert self.segments is not None
        tok = self.lm.tokenizer
        ids: list[list[int]] = []
        offsets: list[tuple[int, int]] = []
        cursor = 0
        for block in [*blocks, question]:
            enc = tok(block, add_special_tokens=False, return_offsets_mapping=True)
            ids.append(list(enc["input_ids"]))
            offsets.extend((cursor + a, cursor + b) for a, b in enc["offset_mapping"])
            cursor += len(block)
        selection = HeadSelection.of_heads(self.heads.heads, self.heads.scores)
        mass, hits = self.segments.question_attention(ids[:-1], ids[-1], selection)
        return mass, offsets, hits


@dataclass
class ChunkLayout:
    """A chunk of passages as EHPC lays them out: one text block per passage, and where each unit landed."""

    blocks: list[str]
    unit_ranges: dict[int, tuple[int, int]]

    @property
    def context(self) -> str:
        return "".join(self.blocks)


def layout_chunk(
    state: PipelineState, units: Sequence[Unit], by_passage: dict[int, list[int]], passages: list[int]
) -> ChunkLayout:
    """`passages` (indices into the state, in this order) as blocks `Document (Title: t) span span \\n`,
    with the character range of every unit of `by_passage` in the joined context."""
    blocks: list[str] = []
    unit_range: dict[int, tuple[int, int]] = {}
    cursor = 0
    for p in passages:
        result = state.passages[p]
        header = f"Document (Title: {result.passage.title}) " if result.passage.title else "Document: "
        parts = [header]
        at = cursor + len(header)
        for span in result.spans:
            for i in by_passage[p]:
                u = units[i]
                if span.start <= u.start and u.end <= span.end:
                    unit_range[i] = (at + u.start - span.start, at + u.end - span.start)
            piece = result.passage.text[span.start : span.end] + " "
            parts.append(piece)
            at += len(piece)
        parts.append("\n")
        blocks.append("".join(parts))
        cursor += len(blocks[-1])
    return ChunkLayout(blocks, unit_range)


def build(ctx: BuildContext, cfg: EHPCSettings) -> EHPCScorer:
    from ragctx.compressors.evaluator_heads import load_heads

    lm = ctx.models.scorer()
    segments = None
    if ctx.settings.segment_kv and ctx.segment_cache is not None:
        from ragctx.scoring.segment_kv import SegmentKVCache

        segments = SegmentKVCache(lm, ctx.segment_cache)
    heads = load_heads(ctx.settings.resolved_cache_dir(), lm)
    return EHPCScorer(
        lm,
        heads,
        cfg.granularity,
        cfg.pool,
        cfg.chunk_tokens,
        segments,
        unit_score=cfg.unit_score,
        passage_prior=cfg.passage_prior,
    )


METHOD = Method(
    "ehpc",
    "evaluator-head token compression: keeps the sentences (or words, tokens) that calibrated early heads attend "
    "to from the question",
    "compressor",
    build,
    EHPCSettings,
)
