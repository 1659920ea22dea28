"""The data pipeline's thread helpers: results in order, and never more than the window in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from index.threads import in_order, usable_cores


def test_in_order_keeps_order_and_bounds_what_is_in_flight() -> None:
    lock, live, most = threading.Lock(), [0], [0]
    built: list[int] = []

    def work(k: int) -> int:
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        time.sleep(0.002 * (k % 3))  # later calls often finish first
        with lock:
            live[0] -= 1
        return k * k

    def calls():  # type: ignore[no-untyped-def]
        for k in range(40):
            built.append(k)
            yield lambda k=k: work(k)

    with ThreadPoolExecutor(4) as pool:
        results = []
        for result in in_order(pool, calls(), window=5):
            results.append(result)
            assert len(built) - len(results) <= 5  # submitted but not consumed
    assert results == [k * k for k in range(40)]
    assert most[0] <= 4


def test_usable_cores_is_positive() -> None:
    assert usable_cores() >= 1
