"""Threads for the index side's numpy and scipy work: how many to start, and how to split rows between them.

NumPy's ufuncs and sorts and scipy's sparse × dense products release the GIL, so threads over blocks of rows use
every core without copying arrays between processes. The trainer's data pipeline (which may import index, not the
other way round) uses the same helpers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")
R = TypeVar("R")


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


def run_all(pool: Executor | None, call: Callable[[T], R], args: Iterable[T]) -> list[R]:
    """``call`` on each of ``args``, in the pool if there is one, results in order."""
    return list(pool.map(call, args)) if pool is not None else [call(a) for a in args]


def row_blocks(n: int, *, rows: int) -> list[tuple[int, int]]:
    """[start, stop) blocks of ``rows`` rows each (the last one shorter)."""
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def nonzero_blocks(indptr: npt.NDArray[np.integer], parts: int) -> list[tuple[int, int]]:
    """[start, stop) blocks of a CSR matrix's rows holding about equal numbers of nonzeros: rows cost what they
    hold, and a popular item's row can hold more than thousands of others'."""
    n = len(indptr) - 1
    targets = np.linspace(0, int(indptr[-1]), parts + 1)
    bounds = np.unique(np.concatenate([[0], np.searchsorted(indptr, targets[1:-1]), [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
