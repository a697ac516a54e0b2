"""EHPC: evaluator-head prompt compression (Fei et al., NeurIPS 2025; algorithms.md §7).

The scorer LM reads the context followed by the question, only up to the deepest evaluator head (early
exit). The attention that the question's tokens pay to each context token through the evaluator heads
is pooled with a small window (so neighbouring tokens keep each other) and averaged over each unit
(token, word or sentence); the shared selection keeps the best units within the budget, in order.
Passages are scored in chunks of at most `chunk_tokens` so memory stays bounded on long contexts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ragctx.compressors.evaluator_heads import QUESTION_PREFIX, EvaluatorHeads
from ragctx.compressors.selection import Granularity, Unit
from ragctx.models import LanguageModel
from ragctx.pipeline.state import PipelineState
from ragctx.scoring.lm_attention import HeadSelection, question_attention


@dataclass
class EHPCScorer:
    lm: LanguageModel
    heads: EvaluatorHeads
    granularity: Granularity = "sentence"
    pool: int = 5
    chunk_tokens: int = 4096
    name: str = "ehpc"

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
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
        # Lay the chunk out as text, remembering where every unit landed.
        parts: list[str] = []
        unit_range: dict[int, tuple[int, int]] = {}
        cursor = 0
        for p in passages:
            result = state.passages[p]
            header = f"Document (Title: {result.passage.title}) " if result.passage.title else "Document: "
            parts.append(header)
            cursor += len(header)
            for span in result.spans:
                span_at = cursor
                for i in by_passage[p]:
                    u = units[i]
                    if span.start <= u.start and u.end <= span.end:
                        unit_range[i] = (span_at + u.start - span.start, span_at + u.end - span.start)
                piece = result.passage.text[span.start : span.end] + " "
                parts.append(piece)
                cursor += len(piece)
            parts.append("\n")
            cursor += 1
        context = "".join(parts)
        text = context + QUESTION_PREFIX + state.question
        enc = self.lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        window = max(1, sum(1 for a, _ in offsets if a >= len(context)))
        selection = HeadSelection.of_heads(self.heads.heads, self.heads.scores)
        mass = question_attention(self.lm, torch.tensor([enc["input_ids"]]), selection, window=window).tokens
        if self.pool > 1:
            pad = self.pool // 2
            mass = torch.nn.functional.avg_pool1d(
                mass[None, None], self.pool, stride=1, padding=pad, count_include_pad=False
            )[0, 0][: len(offsets)]
        # Mean pooled mass of the tokens overlapping each unit (two pointers over sorted ranges).
        order = sorted(unit_range, key=lambda i: unit_range[i])
        t = 0
        for i in order:
            a, b = unit_range[i]
            while t < len(offsets) and offsets[t][1] <= a:
                t += 1
            j, total, n = t, 0.0, 0
            while j < len(offsets) and offsets[j][0] < b:
                if offsets[j][1] > a:
                    total += float(mass[j])
                    n += 1
                j += 1
            scores[i] = total / n if n else 0.0
