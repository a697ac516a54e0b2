"""A request's deadline, checked cooperatively by the work it started.

The service sets a deadline in the worker thread that runs a request; long loops (pipeline stages,
segmentation chunks, EHPC chunks, EXIT passages) call `check_deadline()` between steps, so a request
past its time limit stops and frees its worker instead of burning a core after its 504.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("ragctx_deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The request ran past its time limit; the work was stopped between two steps."""


@contextlib.contextmanager
def deadline_until(at: float | None) -> Iterator[None]:
    """Work in this block (this thread or task) stops at the next check after `at` (a `time.monotonic()`
    instant); None = no limit."""
    if at is None:
        yield
        return
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    at = _DEADLINE.get()
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("the request ran past its time limit")
