"""Micro-batching: many concurrent callers, one model call per batch.

Callers `await submit(item)`; a single worker takes items off a bounded queue, waits at most `max_wait_ms`
for more (up to `max_batch_size`), runs the batch function in a worker thread and resolves each caller's
future. Model calls on a batch cost little more than on one item, so under load this multiplies throughput;
alone, a caller waits only `max_wait_ms` longer.

`ThreadBatcher` is the same for blocking callers in worker threads (the pipelines of concurrent requests,
whose scorer-LM calls it merges): `submit` blocks until the caller's batch has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
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


class ThreadBatcher(Generic[ItemT, ResultT]):
    """Groups concurrent blocking `submit` calls from many threads into calls of `batch_fn(items)`.

    One worker thread takes the waiting items (at most `max_batch_size`) once `max_wait_ms` has passed since
    the first, or earlier when every registered participant is already waiting (nobody else can join, so
    waiting longer only adds latency; a lone request never waits). At most `max_queue` items wait; further
    callers block until there is room (backpressure). `on_batch(size)` is told the size of every batch run.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[ItemT]], Sequence[ResultT]],
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        name: str = "thread-batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.name = name
        self._cond = threading.Condition()
        self._queue: list[tuple[ItemT, Future[ResultT]]] = []
        self._participants = 0
        self._closed = False
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._worker is None:
                self._closed = False
                self._worker = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._worker.start()

    def close(self) -> None:
        """Stop: the batch running finishes; callers still waiting get BatcherClosedError."""
        with self._cond:
            self._closed = True
            waiting, self._queue = self._queue, []
            self._cond.notify_all()
            worker, self._worker = self._worker, None
        for _, future in waiting:
            future.set_exception(BatcherClosedError("the batcher was closed"))
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextlib.contextmanager
    def participant(self) -> Iterator[None]:
        """The calling thread may submit soon: batches wait for it (up to `max_wait_ms`)."""
        with self._cond:
            self._participants += 1
        try:
            yield
        finally:
            with self._cond:
                self._participants -= 1
                self._cond.notify_all()  # the worker may now have everyone it waits for

    def submit(self, item: ItemT) -> ResultT:
        """Blocks until the batch holding `item` has run; its result, or the batch's exception."""
        future: Future[ResultT] = Future()
        with self._cond:
            while not self._closed and len(self._queue) >= self.max_queue:
                self._cond.wait()
            if self._closed or self._worker is None:
                raise BatcherClosedError("the batcher is not running")
            self._queue.append((item, future))
            self._cond.notify_all()
        return future.result()

    def _next_batch(self) -> list[tuple[ItemT, Future[ResultT]]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while not self._closed and len(self._queue) < self.max_batch_size:
                if self._participants and len(self._queue) >= self._participants:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
            self._cond.notify_all()  # room in the queue
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.batch_fn([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # every caller of the batch learns why
                for _, f in live:
                    f.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for (_, f), result in zip(live, results, strict=True):
                f.set_result(result)
