"""MicroBatcher: concurrent callers share batched calls, each gets its own result, failures reach them."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from ragctx.api.batching import BatcherClosedError, MicroBatcher


class RecordingBatchFunction:
    """A real batch function that also remembers the size of every batch it was given."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, items: list):
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        return self.fn(items)


def run(coro):
    return asyncio.run(coro)


def test_fifty_concurrent_embeddings_are_batched_and_equal_the_unbatched_ones(exact_registry, nq20_rows):
    embedder = exact_registry.embedder()
    texts = [row["question"] for row in nq20_rows] + [p["title"] for p in nq20_rows[0]["passages"]]
    texts = texts[:50]
    assert len(texts) == 50

    def encode(batch: list[str]) -> list[np.ndarray]:
        return list(embedder.encode(batch, normalize_embeddings=True, convert_to_numpy=True))

    recorder = RecordingBatchFunction(encode)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(recorder, max_batch_size=16, max_wait_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(t) for t in texts))
        finally:
            await batcher.close()

    batched = run(main())
    assert sum(recorder.sizes) == 50
    assert max(recorder.sizes) > 1, f"no batching happened: {recorder.sizes}"
    assert max(recorder.sizes) <= 16
    assert threading.main_thread().name not in recorder.threads  # the model ran off the event loop
    # batch_size=1: every text through the model on its own, without the padding a batch adds.
    unbatched = embedder.encode(texts, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(np.stack(batched), unbatched, atol=1e-5)


def test_a_lone_item_runs_after_the_short_wait_not_never():
    recorder = RecordingBatchFunction(lambda xs: [x * 2 for x in xs])

    async def main() -> tuple[int, float]:
        batcher = MicroBatcher(recorder, max_batch_size=64, max_wait_ms=30)
        await batcher.start()
        started = time.perf_counter()
        result = await batcher.submit(21)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return result, elapsed

    result, elapsed = run(main())
    assert result == 42
    assert recorder.sizes == [1]
    assert elapsed < 1.0


def test_submit_many_keeps_the_order_of_its_items():
    async def main() -> list[str]:
        batcher = MicroBatcher(lambda xs: [x.upper() for x in xs], max_batch_size=3, max_wait_ms=5)
        await batcher.start()
        try:
            return await batcher.submit_many(list("abcdefgh"))
        finally:
            await batcher.close()

    assert run(main()) == list("ABCDEFGH")


def test_a_failing_batch_fails_its_callers_and_later_batches_still_run():
    def fragile(xs: list[int]) -> list[int]:
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return [x + 1 for x in xs]

    async def main() -> tuple[list[object], int]:
        batcher = MicroBatcher(fragile, max_batch_size=8, max_wait_ms=20)
        await batcher.start()
        try:
            outcomes = await asyncio.gather(*(batcher.submit(x) for x in (1, -1, 2)), return_exceptions=True)
            after = await batcher.submit(5)
        finally:
            await batcher.close()
        return outcomes, after

    outcomes, after = run(main())
    assert all(isinstance(o, ValueError) for o in outcomes)  # they shared the batch that failed
    assert after == 6


def test_a_batch_function_returning_the_wrong_number_of_results_is_an_error():
    async def main() -> None:
        batcher = MicroBatcher(lambda xs: xs[:-1], max_batch_size=4, max_wait_ms=1)
        await batcher.start()
        try:
            await batcher.submit("x")
        finally:
            await batcher.close()

    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        run(main())


def test_a_caller_that_gives_up_does_not_disturb_the_others():
    release = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        release.wait(5)
        return xs

    async def main() -> list[int]:
        batcher = MicroBatcher(slow, max_batch_size=8, max_wait_ms=20)
        await batcher.start()
        try:
            impatient = asyncio.create_task(batcher.submit(0))
            patient = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
            await asyncio.sleep(0.05)
            impatient.cancel()
            release.set()
            return list(await asyncio.gather(*patient))
        finally:
            await batcher.close()

    assert run(main()) == [1, 2, 3]


def test_a_closed_batcher_refuses_new_items():
    async def main() -> None:
        batcher = MicroBatcher(lambda xs: xs)
        await batcher.start()
        await batcher.close()
        await batcher.submit(1)

    with pytest.raises(BatcherClosedError):
        run(main())
