"""Relevance of a passage to a question: query likelihood under the scorer LM, and embedding cosine.

Query likelihood follows LongLLMLingua's coarse ranking: how well the LM predicts the question after
reading the passage (mean log-probability per question token). All passages go through one left-padded
batch; the question is the common suffix, so its tokens sit in the same last columns of every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragctx.models import LanguageModel
from ragctx.types import Passage

QL_BRIDGE = "\n\nA question that this document answers:"


@dataclass
class QueryLikelihoodScorer:
    lm: LanguageModel
    batch_size: int = 8

    def score(self, question: str, passages: Sequence[Passage]) -> list[float]:
        """Mean log P(question token | passage, earlier question tokens), one per passage."""
        tok = self.lm.tokenizer
        q_ids = tok.encode(" " + question.strip(), add_special_tokens=False)
        if not q_ids:
            raise ValueError("the question is empty")
        out: list[float] = []
        pad = int(tok.pad_token_id or 0)
        for start in range(0, len(passages), self.batch_size):
            chunk = passages[start : start + self.batch_size]
            rows = [tok.encode(p.titled_text + QL_BRIDGE, add_special_tokens=False) + q_ids for p in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            lq = len(q_ids)
            with torch.inference_mode():
                logits = self.lm.model(
                    ids.to(self.lm.device),
                    attention_mask=mask.to(self.lm.device),
                    position_ids=positions.to(self.lm.device),
                    logits_to_keep=lq + 1,
                ).logits.float()
            # logits[:, j] predicts token at column width-lq-1+j+1; the question occupies the last lq columns.
            logp = torch.log_softmax(logits[:, :-1], dim=-1).cpu()
            target = torch.tensor(q_ids)
            picked = logp.gather(2, target.expand(len(rows), lq).unsqueeze(-1)).squeeze(-1)
            out.extend(float(x) for x in picked.mean(dim=1))
        return out


def embedding_relevance(embedder: Any, question: str, passages: Sequence[Passage]) -> list[float]:
    """Cosine similarity of all-MiniLM-style embeddings (normalised), one per passage."""
    vecs = embedder.encode(
        [question] + [p.titled_text for p in passages], normalize_embeddings=True, convert_to_numpy=True
    )
    return [float(x) for x in vecs[1:] @ vecs[0]]
