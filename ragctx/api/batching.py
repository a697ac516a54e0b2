"""Micro-batching: many concurrent callers, one model call per batch.

Callers `await submit(item)`; a single worker takes items off a bounded queue, waits at most `max_wait_ms`
for more (up to `max_batch_size`), runs the batch function in a worker thread and resolves each caller's
future. Model calls on a batch cost little more than on one item, so under load this multiplies throughput;
alone, a caller waits only `max_wait_ms` longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio.to_thread

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatcherClosedError(RuntimeError):
    pass


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]


class MicroBatcher(Generic[ItemT, ResultT]):
    """Groups concurrent `submit` calls into calls of `batch_fn(items) -> results` (same length, same order).

    Start it inside the event loop that will use it (`await start()`), close it with `await close()`.
    `on_batch(size)` is told the size of every batch run (for metrics).
    """

    def __init__(
        self,
        batch_fn: Callable[[list[ItemT]], Sequence[ResultT]],
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[ItemT, ResultT]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: list[_Pending[ItemT, ResultT]] = []
        self._closed = False

    async def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue(self.max_queue)
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Stop taking items; callers still waiting get BatcherClosedError."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for pending in self._in_flight:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the batcher was closed"))
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the batcher was closed"))

    async def submit(self, item: ItemT) -> ResultT:
        if self._closed or self._queue is None:
            raise BatcherClosedError("the batcher is not running")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))  # a full queue makes callers wait: backpressure
        return await future

    async def submit_many(self, items: Sequence[ItemT]) -> list[ResultT]:
        """All of `items`, each batched with whatever else is waiting; results in the same order."""
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    async def _next_batch(self) -> list[_Pending[ItemT, ResultT]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            # Callers that gave up (timeout, disconnect) cost nothing.
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            self._in_flight = live
            try:
                results = await anyio.to_thread.run_sync(self.batch_fn, [p.item for p in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # every caller of the batch learns why
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for p, result in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
