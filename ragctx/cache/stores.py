"""Byte stores behind the segment cache: in-process LRU (the embedded default) and Redis.

Both take and return whole batches, so one request costs one round trip to Redis whatever its number
of segments (MGET to read, one pipeline of SET ... EX to write). Eviction in Redis is left to the
server (`maxmemory-policy allkeys-lru`, see docker-compose.yml); entries also expire after a TTL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class StoreUnavailable(RuntimeError):
    """The store could not be reached in time; callers fall back to computing."""


class ByteStore(Protocol):
    name: str

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, items: Mapping[str, bytes]) -> None: ...

    def delete(self, keys: Sequence[str]) -> None: ...


class MemoryStore:
    """Least-recently-used dict bounded by the total bytes of its values; thread-safe."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                blob = self._items.get(key)
                if blob is not None:
                    self._items.move_to_end(key)
                out.append(blob)
        return out

    def set_many(self, items: Mapping[str, bytes]) -> None:
        with self._lock:
            for key, blob in items.items():
                if len(blob) > self.max_bytes:
                    continue  # would evict everything and still not fit
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= len(old)
                self._items[key] = blob
                self._bytes += len(blob)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def delete(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= len(old)


class RedisStore:
    """Redis with short socket timeouts: a slow or dead server raises StoreUnavailable quickly."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float) -> None:
        import redis

        self.url = url
        self.ttl_s = ttl_s
        # Every Redis error (connection, timeout, OOM under `noeviction`, READONLY replicas, other server
        # replies) means "compute without the cache this time", never a failed request.
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return list(self._client.mget(list(keys)))
        except self._errors as err:
            raise StoreUnavailable(f"redis {self.url}: {err}") from err

    def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, blob in items.items():
                # Concurrent writers of one key write the same content-addressed bytes: last one wins.
                pipe.set(key, blob, ex=self.ttl_s)
            pipe.execute()
        except self._errors as err:
            raise StoreUnavailable(f"redis {self.url}: {err}") from err

    def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            self._client.delete(*keys)
        except self._errors as err:
            raise StoreUnavailable(f"redis {self.url}: {err}") from err
