"""The micro-batcher merges one-user and many-user jobs into searches of at most ``max_batch`` queries, and every
job gets exactly what its own search would have answered."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from binrec.index.codes import CodeLayout
from binrec.index.item_index import ItemIndex
from binrec.service.batcher import MicroBatcher


@dataclass(frozen=True)
class Snapshot:
    index: ItemIndex


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    codes = np.random.default_rng(5).integers(0, 256, size=(500, 8), dtype=np.uint8)
    return Snapshot(ItemIndex.build(codes, CodeLayout.SIGN1, 64, device="cpu"))


def test_jobs_merge_up_to_max_batch_and_each_gets_its_own_answer(snapshot: Snapshot) -> None:
    rng = np.random.default_rng(6)
    queries = rng.integers(0, 256, size=(31, 8), dtype=np.uint8)
    exclude = [rng.choice(500, size=int(rng.integers(0, 30)), replace=False).astype(np.int64) for _ in range(31)]
    searched: list[int] = []

    async def run() -> list[tuple[np.ndarray, np.ndarray]]:
        batcher = MicroBatcher(max_batch=8, max_wait_ms=0, on_batch=lambda size, _: searched.append(size))
        batcher.start()
        try:
            many = await asyncio.gather(
                batcher.search_many(snapshot, queries[:5], 10, exclude=exclude[:5]),
                batcher.search(snapshot, queries[5], 3, exclude=exclude[5]),
                batcher.search_many(snapshot, queries[6:11], 7, exclude=exclude[6:11]),
                batcher.search_many(snapshot, queries[11:31], 4, exclude=exclude[11:31]),
            )
        finally:
            await batcher.close()
        first, single, third, fourth = many
        return [
            *((first.ids[i], first.scores[i]) for i in range(5)),
            single,
            *((third.ids[i], third.scores[i]) for i in range(5)),
            *((fourth.ids[i], fourth.scores[i]) for i in range(20)),
        ]

    answers = asyncio.run(run())
    ks = [10] * 5 + [3] + [7] * 5 + [4] * 20
    for row, ((ids, scores), k) in enumerate(zip(answers, ks, strict=True)):
        expected = snapshot.index.search(queries[row : row + 1], k, exclude=[exclude[row]])
        assert np.array_equal(ids, expected.ids[0]) and np.array_equal(scores, expected.scores[0]), row
    # 5 + 1 fit in 8, the next 5 would not (held, it opens the next search); 20 is over 8 and goes alone.
    assert searched == [6, 5, 20]


class SlowIndex:
    """An index whose searches take a while, counting overlaps: on a thread as an index in this process searches,
    or awaited on the event loop as a round trip to the search process is (``waits_on_peer``)."""

    def __init__(self, index: ItemIndex, *, waits_on_peer: bool) -> None:
        self.index = index
        self.waits_on_peer = waits_on_peer
        self.active = 0
        self.most = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.add(threading.current_thread().name)

    def _leave(self) -> None:
        with self.lock:
            self.active -= 1

    def search(self, *args: object, **kwargs: object) -> object:
        self._enter()
        time.sleep(0.05)
        self._leave()
        return self.index.search(*args, **kwargs)  # type: ignore[arg-type]

    async def search_async(self, *args: object, **kwargs: object) -> object:
        self._enter()
        await asyncio.sleep(0.05)
        self._leave()
        return self.index.search(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("in_flight", "waits_on_peer"), [(1, False), (1, True), (3, True)])
def test_batches_in_flight_overlap_up_to_the_limit_and_answers_stay_exact(
    snapshot: Snapshot, in_flight: int, waits_on_peer: bool
) -> None:
    """With an index in another process, requests that arrive while a batch is away go out at once (up to
    ``in_flight`` batches), instead of waiting for it, and the batches are awaited on the event loop's own thread;
    each still gets its own exact answer. An index in this process searches on the batcher's thread."""
    slow = SlowIndex(snapshot.index, waits_on_peer=waits_on_peer)
    model = Snapshot(slow)  # type: ignore[arg-type]
    queries = np.random.default_rng(8).integers(0, 256, size=(12, 8), dtype=np.uint8)
    loop_thread = ""

    async def run() -> list[tuple[np.ndarray, np.ndarray]]:
        nonlocal loop_thread
        loop_thread = threading.current_thread().name
        batcher = MicroBatcher(max_batch=64, max_wait_ms=0, in_flight=in_flight)
        batcher.start()
        try:
            answers = []
            for row in range(len(queries)):  # one request every 10 ms, each search taking 50 ms
                answers.append(asyncio.ensure_future(batcher.search(model, queries[row], 5)))
                await asyncio.sleep(0.01)
            return list(await asyncio.gather(*answers))
        finally:
            await batcher.close()

    answers = asyncio.run(run())
    assert slow.most == in_flight
    assert (slow.threads == {loop_thread}) == waits_on_peer
    for row, (ids, scores) in enumerate(answers):
        expected = snapshot.index.search(queries[row : row + 1], 5)
        assert np.array_equal(ids, expected.ids[0]) and np.array_equal(scores, expected.scores[0])
