"""Scoring one shard: the unit of work and of checkpointing, the same in the local and the Ray engine.

A shard's scores depend only on its passages and the `ScoringSpec`: the LM batches are formed inside the
shard (see `LMQualityScorer.score`) and torch runs with `threads` intra-op threads. That is what makes a
resumed job, and a job on Ray, give the same floats as an uninterrupted local run: CPU kernels are
deterministic for a fixed input shape and thread count, but a different batch composition or thread
count can change the last bits of a logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragctx.jobs.dedup import band_keys
from ragctx.jobs.quality import QUALITY_VERSION, LMQualityScorer, QualityWeights, text_signals
from ragctx.jobs.shards import ScoredPassage
from ragctx.models import LanguageModel
from ragctx.types import Passage


@dataclass(frozen=True)
class ScoringSpec:
    """Everything that changes a passage's scores; part of the job fingerprint."""

    scorer_model: str
    threads: int
    batch_size: int = 16
    max_passage_tokens: int = 256
    min_words: int = 12
    weights: QualityWeights = field(default_factory=QualityWeights)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.batch_size < 1 or self.max_passage_tokens < 1:
            raise ValueError("threads, batch size and max passage tokens must be at least 1")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "version": QUALITY_VERSION,
            "scorer_model": self.scorer_model,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "max_passage_tokens": self.max_passage_tokens,
            "min_words": self.min_words,
            "weights": self.weights.as_dict(),
        }


class ShardScorer:
    """LM quality, text signals, combined quality and MinHash band keys for a shard of passages."""

    def __init__(self, lm: LanguageModel, spec: ScoringSpec) -> None:
        self.spec = spec
        self.lm_scorer = LMQualityScorer(lm, spec.batch_size, spec.max_passage_tokens)

    def score(self, passages: Sequence[Passage]) -> list[ScoredPassage]:
        lm_scores = self.lm_scorer.score(passages)
        rows = []
        for passage, lm in zip(passages, lm_scores, strict=True):
            signals = text_signals(passage.titled_text, self.spec.min_words)
            quality = lm - self.spec.weights.penalty(signals)
            rows.append(ScoredPassage(passage, lm, signals, quality, band_keys(passage.text)))
        return rows


def set_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads; returns the previous count so a caller can restore it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous
