"""Admission control: at most `max_concurrency` requests in work at once, each within a time limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.to_thread

from ragctx.api.errors import ApiError, timeout_message
from ragctx.deadline import deadline_until

T = TypeVar("T")

RETRY_AFTER_S = 1


class Slot:
    """One admitted request. Worker threads it starts retain it, so work abandoned after a timeout keeps
    counting against the limit until it really ends: timeouts cannot pile up hidden work."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter
        # When the request's work must stop (time.monotonic()); its worker threads check it between steps.
        self.deadline_at: float | None = None
        self._holds = 1  # the request's own, plus one per running worker thread
        self._released = False

    def release(self) -> None:
        """The request is done with the slot (idempotent: streaming paths may say so twice)."""
        with self._limiter.lock:
            if self._released:
                return
            self._released = True
        self.drop()

    def retain(self) -> None:
        with self._limiter.lock:
            self._holds += 1

    def drop(self) -> None:
        """A hold taken by `retain` ends."""
        with self._limiter.lock:
            self._holds -= 1
            if self._holds == 0:
                self._limiter.active -= 1


class ConcurrencyLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.lock = threading.Lock()  # threads release slots too

    def try_acquire(self) -> Slot | None:
        with self.lock:
            if self.active >= self.limit:
                return None
            self.active += 1
        return Slot(self)

    async def admit(self, wait_s: float = 0.0) -> Slot:
        """A slot, waiting up to `wait_s` for one to free (a short queue absorbs bursts), else 429."""
        give_up = time.monotonic() + wait_s
        while (slot := self.try_acquire()) is None:
            if time.monotonic() >= give_up:
                raise ApiError(
                    429,
                    f"the service is working on its maximum of {self.limit} requests; retry shortly",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            await anyio.sleep(0.01)
        return slot


async def run_in_thread(slot: Slot, fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a worker thread, keeping the event loop free; cancellable (the thread is then
    abandoned, and holds `slot` until it finishes)."""
    slot.retain()

    def work() -> T:
        try:
            with deadline_until(slot.deadline_at):
                return fn()
        finally:
            slot.drop()

    return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)


@contextmanager
def time_limit(seconds: float, on_timeout: Callable[[], None] | None = None) -> Iterator[None]:
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        if on_timeout is not None:
            on_timeout()
        raise ApiError(504, timeout_message(seconds)) from None
