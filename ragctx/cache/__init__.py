"""Segment cache: values computed once per segment (keys and values of the scorer LM, CompLLM concept
embeddings), keyed by content, in process or in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragctx.cache.codec import CachedValue, CorruptEntry
from ragctx.cache.segment_cache import CacheStats, SegmentCache, content_key
from ragctx.cache.stores import ByteStore, MemoryStore, RedisStore, StoreUnavailable

if TYPE_CHECKING:
    from ragctx.config import CoreSettings


def open_segment_cache(settings: CoreSettings) -> SegmentCache:
    """Redis when `redis_url` is set, else an in-process LRU of `segment_cache_mb`."""
    store: ByteStore
    if settings.redis_url:
        store = RedisStore(settings.redis_url, settings.redis_ttl_s, settings.redis_timeout_s)
    else:
        store = MemoryStore(settings.segment_cache_mb * 1024 * 1024)
    return SegmentCache(store, settings.segment_cache_retry_s)


__all__ = [
    "ByteStore",
    "CacheStats",
    "CachedValue",
    "CorruptEntry",
    "MemoryStore",
    "RedisStore",
    "SegmentCache",
    "StoreUnavailable",
    "content_key",
    "open_segment_cache",
]
