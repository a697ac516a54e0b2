"""Near-duplicate passages across a whole corpus: MinHash LSH to find candidates, exact Jaccard to decide.

Similarity is the Jaccard of word 3-shingles, as in the `dedup` pipeline stage (same `shingles`, same
`dedup_threshold`). Each passage gets `BANDS` band keys from a MinHash signature of `BANDS * ROWS`
hashes (computed with each shard, so the final pass only compares keys); two passages that share any
band key are candidates, and a candidate pair is a duplicate only if its exact Jaccard reaches the
threshold. With 16 bands of 8 rows, a pair at Jaccard 0.8 shares a band with probability 0.95, at 0.9
with 0.9998. Hashes are seeded and platform-independent (BLAKE2b), so band keys are the same on every
machine and in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ragctx.pipeline.stages import jaccard, shingles

BANDS = 16
ROWS = 8
_PRIME = (1 << 61) - 1
_rng = np.random.default_rng(20240711)
# a * x stays below 2**63 for a < 2**31 and 32-bit x, so uint64 arithmetic never wraps before the modulo.
_A = _rng.integers(1, 1 << 31, size=BANDS * ROWS, dtype=np.uint64)
_B = _rng.integers(0, 1 << 31, size=BANDS * ROWS, dtype=np.uint64)
# Groups of passages that share one band key are compared with at most this many earlier members; a key
# shared by thousands (one menu on every page) would otherwise cost a quadratic number of comparisons.
MAX_COMPARED_PER_KEY = 16


def band_keys(text: str) -> list[int]:
    """BANDS band keys (63-bit ints) of the text's shingle set; empty for a text without words."""
    shingle_set = shingles(text)
    if not shingle_set:
        return []
    hashed = np.array(
        sorted(
            int.from_bytes(hashlib.blake2b(" ".join(s).encode(), digest_size=4).digest(), "little") for s in shingle_set
        ),
        dtype=np.uint64,
    )
    signature = ((hashed[:, None] * _A[None, :] + _B[None, :]) % _PRIME).min(axis=0)
    keys = []
    for band in range(BANDS):
        rows = signature[band * ROWS : (band + 1) * ROWS].astype("<u8").tobytes()
        digest = hashlib.blake2b(band.to_bytes(2, "little") + rows, digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return keys


@dataclass(frozen=True)
class Duplicate:
    """Passage `index` is dropped as a near-duplicate of `of` (the best-quality member of its group)."""

    index: int
    of: int
    similarity: float


def candidate_pairs(keys: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(earlier, later) index pairs that share at least one band key, sorted."""
    pairs: set[tuple[int, int]] = set()
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, passage_keys in enumerate(keys):
        for band, key in enumerate(passage_keys):
            members = buckets.setdefault((band, key), [])
            pairs.update((j, i) for j in members[:MAX_COMPARED_PER_KEY])
            members.append(i)
    return sorted(pairs)


def find_duplicates(
    keys: Sequence[Sequence[int]],
    quality: Sequence[float],
    texts_of: Callable[[Iterable[int]], dict[int, str]],
    threshold: float,
) -> list[Duplicate]:
    """Near-duplicates to drop: in each group of passages linked by Jaccard >= threshold, all but the best.

    The best member has the highest quality (the earliest on ties). `texts_of` loads the texts of the
    candidate passages only, so a caller can stream them from disk.
    """
    pairs = candidate_pairs(keys)
    if not pairs:
        return []
    texts = texts_of(sorted({i for pair in pairs for i in pair}))
    shingle_sets = {i: shingles(t) for i, t in texts.items()}
    parent = {i: i for i in shingle_sets}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        if jaccard(shingle_sets[a], shingle_sets[b]) >= threshold:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in sorted(parent):
        groups.setdefault(root(i), []).append(i)
    duplicates = []
    for members in groups.values():
        if len(members) < 2:
            continue
        best = min(members, key=lambda i: (-quality[i], i))
        for i in members:
            if i != best:
                similarity = jaccard(shingle_sets[i], shingle_sets[best])
                duplicates.append(Duplicate(index=i, of=best, similarity=round(similarity, 4)))
    return sorted(duplicates, key=lambda d: d.index)
