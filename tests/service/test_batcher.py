"""The micro-batcher merges one-user and many-user jobs into searches of at most ``max_batch`` queries, and every
job gets exactly what its own search would have answered."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from index.codes import CodeLayout
from index.item_index import ItemIndex
from service.batcher import NO_ITEMS, MicroBatcher


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
    # No search over 8 queries, no job more than 2 of them at once: the 20-query job took 10 searches.
    assert max(searched) <= 8 and sum(searched) == 31 and len(searched) == 10


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


def test_a_large_job_goes_in_pieces_and_a_smaller_one_waits_at_most_one_search(snapshot: Snapshot) -> None:
    """A request of many users is cut into batches; one user's query that arrives meanwhile is in the next batch,
    not behind every piece of the large one; both get exact answers."""
    slow = SlowIndex(snapshot.index, waits_on_peer=False)  # 50 ms a search
    model = Snapshot(slow)  # type: ignore[arg-type]
    queries = np.random.default_rng(9).integers(0, 256, size=(33, 8), dtype=np.uint8)
    searched: list[int] = []
    done: list[str] = []

    async def run() -> tuple[object, tuple[np.ndarray, np.ndarray]]:
        batcher = MicroBatcher(max_batch=8, max_wait_ms=0, on_batch=lambda size, _: searched.append(size))
        batcher.start()
        try:
            large = asyncio.ensure_future(batcher.search_many(model, queries[:32], 5, exclude=[NO_ITEMS] * 32))
            large.add_done_callback(lambda _: done.append("large"))
            await asyncio.sleep(0.01)  # the first piece is being searched
            single = asyncio.ensure_future(batcher.search(model, queries[32], 5))
            single.add_done_callback(lambda _: done.append("single"))
            return await large, await single
        finally:
            await batcher.close()

    large, (ids, scores) = asyncio.run(run())
    assert done == ["single", "large"]
    assert max(searched) <= 4 and sum(searched) == 33  # pieces of a quarter batch, the single one beside one
    expected = snapshot.index.search(queries, 5)
    assert np.array_equal(large.ids, expected.ids[:32]) and np.array_equal(large.scores, expected.scores[:32])
    assert np.array_equal(ids, expected.ids[32]) and np.array_equal(scores, expected.scores[32])


def test_the_oldest_job_is_not_starved_by_a_stream_of_smaller_ones(snapshot: Snapshot) -> None:
    queries = np.random.default_rng(10).integers(0, 256, size=(16, 8), dtype=np.uint8)
    done: list[str] = []

    async def run() -> None:
        batcher = MicroBatcher(max_batch=8, max_wait_ms=0)
        batcher.start()
        try:
            large = asyncio.ensure_future(batcher.search_many(snapshot, queries, 5, exclude=[NO_ITEMS] * 16))
            large.add_done_callback(lambda _: done.append("large"))
            singles = []
            for row in range(60):  # always more single queries waiting than a batch holds
                single = asyncio.ensure_future(batcher.search(snapshot, queries[row % 16], 5))
                single.add_done_callback(lambda _: done.append("single"))
                singles.append(single)
            await asyncio.gather(large, *singles)
        finally:
            await batcher.close()

    asyncio.run(run())
    assert done.index("large") < len(done) - 1  # answered while single queries still waited
