"""Threads for the data pipeline: how many to start, and how to run many blocks through them in bounded memory.

NumPy releases the GIL inside its array operations, so threads over blocks of rows use every core
without copying arrays between processes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on: in a container or under ``taskset`` fewer than ``os.cpu_count()``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def in_order(pool: ThreadPoolExecutor, calls: Iterable[Callable[[], T]], *, window: int) -> Iterator[T]:
    """The results of ``calls`` in order, with at most ``window`` of them submitted but not yet consumed.

    ``calls`` is iterated in the caller's thread, so whatever builds each call (a draw from a shared
    random stream, say) happens in order; only the calls themselves run in the pool.
    """
    pending: deque[Future[T]] = deque()
    for call in calls:
        pending.append(pool.submit(call))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
