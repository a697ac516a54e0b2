"""Typed values keyed by content, over a byte store, with the fault rules of the service.

- A value is read only if it decodes as the expected kind from the expected owner (model
  fingerprint) with a matching checksum; anything else is deleted and counted as `corrupt`, and the
  caller recomputes it.
- When the store is down or slow, reads return misses and writes are dropped: the caller computes,
  the request succeeds, `fallbacks` rises and a warning is logged once per outage. The store is
  tried again after `retry_after_s`, so a restarted Redis fills up again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from ragctx.cache.codec import CachedValue, CorruptEntry, decode, encode
from ragctx.cache.stores import ByteStore, StoreUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "ragctx:seg:"


def content_key(kind: str, owner: str, token_ids: Iterable[int], extra: str = "") -> str:
    """Key of a segment's value: hash of (value kind, model fingerprint, extra, token ids)."""
    h = hashlib.sha256()
    h.update(f"{kind}\0{owner}\0{extra}\0".encode())
    h.update(",".join(map(str, token_ids)).encode())
    return KEY_PREFIX + h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    fallbacks: int = 0
    corrupt: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SegmentCache:
    def __init__(self, store: ByteStore, retry_after_s: float = 5.0) -> None:
        self.store = store
        self.retry_after_s = retry_after_s
        self.stats = CacheStats()
        self._down_until = 0.0
        self._warned = False
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self.store.name

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _fell_back(self, err: StoreUnavailable) -> None:
        with self._lock:
            self.stats.fallbacks += 1
            self._down_until = time.monotonic() + self.retry_after_s
            if not self._warned:
                log.warning("segment cache unavailable, computing instead: %s", err)
                self._warned = True

    def get_many(self, keys: Sequence[str], kind: str, owner: str) -> list[CachedValue | None]:
        if not keys:
            return []
        if not self._available():
            with self._lock:
                self.stats.fallbacks += 1
                self.stats.misses += len(keys)
            return [None] * len(keys)
        try:
            blobs = self.store.get_many(keys)
        except StoreUnavailable as err:
            self._fell_back(err)
            with self._lock:
                self.stats.misses += len(keys)
            return [None] * len(keys)
        self._warned = False
        out: list[CachedValue | None] = []
        bad: list[str] = []
        for key, blob in zip(keys, blobs, strict=True):
            value = None
            if blob is not None:
                try:
                    value = decode(blob, kind, owner)
                except CorruptEntry as err:
                    log.warning("segment cache entry %s dropped: %s", key, err)
                    bad.append(key)
            out.append(value)
        with self._lock:
            self.stats.hits += sum(v is not None for v in out)
            self.stats.misses += sum(v is None for v in out)
            self.stats.corrupt += len(bad)
            self.stats.bytes_read += sum(len(b) for b in blobs if b is not None)
        if bad:
            try:
                self.store.delete(bad)
            except StoreUnavailable as err:
                self._fell_back(err)
        return out

    def discard(self, keys: Sequence[str], why: str) -> None:
        """Drop entries that decoded but do not fit their use (e.g. a shape the reader does not expect)."""
        if not keys:
            return
        log.warning("segment cache: %d entries dropped: %s", len(keys), why)
        with self._lock:
            self.stats.corrupt += len(keys)
            self.stats.hits -= len(keys)
            self.stats.misses += len(keys)
        try:
            self.store.delete(keys)
        except StoreUnavailable as err:
            self._fell_back(err)

    def put_many(self, items: dict[str, CachedValue]) -> None:
        if not items or not self._available():
            return
        blobs = {key: encode(value) for key, value in items.items()}
        try:
            self.store.set_many(blobs)
        except StoreUnavailable as err:
            self._fell_back(err)
            return
        with self._lock:
            self.stats.bytes_written += sum(len(b) for b in blobs.values())
