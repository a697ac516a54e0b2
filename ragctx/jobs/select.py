"""Which passages a pruning job keeps, decided once over the whole corpus after every shard is scored.

Near-duplicates (all but the best of each group) are always dropped. Of the rest, `keep` keeps the best
round(keep * N) passages of the whole corpus (N counts duplicates too, so `--keep 0.75` keeps 75% of
the corpus whenever enough distinct passages exist), or `min_quality` keeps those at or above it. Ties
are broken by corpus order, so the choice is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ragctx.jobs.dedup import Duplicate
from ragctx.jobs.quality import TextSignals

# A signal is named as a reason for a drop from this badness on.
REASON_BADNESS = 0.25


@dataclass(frozen=True)
class PassageScore:
    """What the selection needs of one passage (no text)."""

    id: str
    lm: float
    quality: float
    signals: TextSignals


@dataclass(frozen=True)
class Selection:
    kept: list[bool]
    threshold: float | None  # lowest quality kept (keep), or the given minimum
    reasons: dict[int, list[str]]  # for every dropped passage, by corpus index
    duplicates: frozenset[int]  # corpus indices dropped as near-duplicates

    @property
    def kept_count(self) -> int:
        return sum(self.kept)


def select(
    scores: Sequence[PassageScore],
    duplicates: Sequence[Duplicate],
    keep: float | None = None,
    min_quality: float | None = None,
) -> Selection:
    if (keep is None) == (min_quality is None):
        raise ValueError("give exactly one of keep (a fraction) and min_quality (a threshold)")
    if keep is not None and not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1] (got {keep})")
    duplicate_of = {d.index: d for d in duplicates}
    eligible = [i for i in range(len(scores)) if i not in duplicate_of]
    if keep is not None:
        wanted = math.floor(keep * len(scores) + 0.5)
        ranked = sorted(eligible, key=lambda i: (-scores[i].quality, i))
        chosen = set(ranked[:wanted])
        threshold = min((scores[i].quality for i in chosen), default=None)
    else:
        assert min_quality is not None
        chosen = {i for i in eligible if scores[i].quality >= min_quality}
        threshold = min_quality
    kept = [i in chosen for i in range(len(scores))]
    reasons: dict[int, list[str]] = {}
    for i, score in enumerate(scores):
        if kept[i]:
            continue
        dup = duplicate_of.get(i)
        if dup is not None:
            reasons[i] = [f"near-duplicate of {scores[dup.of].id} (Jaccard {dup.similarity:.2f})"]
        else:
            below = f"below threshold {threshold:.3f}" if threshold is not None else "nothing is kept"
            reasons[i] = [f"quality {score.quality:.3f} {below}", *signal_reasons(score)]
    return Selection(kept=kept, threshold=threshold, reasons=reasons, duplicates=frozenset(duplicate_of))


def signal_reasons(score: PassageScore) -> list[str]:
    s = score.signals
    named = []
    if s.short > 0:
        named.append(f"short ({s.words} words)")
    if s.boilerplate >= REASON_BADNESS:
        named.append(f"boilerplate or navigation ({s.boilerplate:.2f})")
    if s.noise >= REASON_BADNESS:
        named.append(f"character noise ({s.noise:.2f})")
    return named
