"""Concurrent searches merged into one index call by the single owner of the index.

A search holds the index for a few hundred microseconds, most of it fixed cost; answering 32 users in
one call costs little more than answering one. Requests put their query on a queue and await a future;
one task takes the first waiting query, keeps collecting until ``max_batch`` queries or ``max_wait_ms``
have passed, and runs them as one search. An index in this process searches on its own thread (the event loop
never blocks on it). An index whose backend is the search process's waits for it on the event loop itself, with
several batches away at once (``in_flight``), so that what arrives meanwhile goes out without waiting. Each query
is answered from the model snapshot it was submitted with, so a model swap never mixes versions inside an answer;
queries of different snapshots go to separate searches. A batch holds at most ``max_batch`` queries, and one request
at most a quarter of them: a request of many users is searched in pieces, the smaller requests going first, so that
it costs its own latency, not its neighbours'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from index.item_index import SearchResult
from service.search_client import SearchUnavailable

log = logging.getLogger(__name__)

Answer = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]  # item rows and scores, best first
NO_ITEMS = np.empty(0, np.int64)


@dataclass
class SearchJob:
    """Queries against one model snapshot (``model.index`` searches them): one user's, or a whole request's users;
    each row keeps its own exclusions and scales. A job larger than a batch is searched piece by piece."""

    model: Any
    codes: npt.NDArray[Any]  # [rows, width]
    k: int
    exclude: list[npt.NDArray[np.int64]]  # one per row (empty: none)
    scales: npt.NDArray[np.floating] | None  # [rows, ...] or None
    future: asyncio.Future[SearchResult] = field(repr=False)
    taken: int = 0  # rows handed to searches so far
    answered: int = 0  # rows whose answers are in ``found``
    found: SearchResult | None = field(default=None, repr=False)  # the answer, filled piece by piece

    @property
    def rows(self) -> int:
        return len(self.codes)

    @property
    def left(self) -> int:
        return self.rows - self.taken

    def take(self, rows: int) -> Piece:
        piece = Piece(self, self.taken, self.taken + rows)
        self.taken += rows
        return piece


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of a job, searched in one batch."""

    job: SearchJob
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def answer(self, found: SearchResult) -> None:
        """This piece's rows of the job's answer; the job is answered once every piece is."""
        job = self.job
        if job.future.done():  # cancelled, or failed by another piece
            return
        if self.rows == job.rows:
            job.future.set_result(found)
            return
        if job.found is None:
            job.found = SearchResult(ids=np.empty((job.rows, job.k), np.int64),
                                     scores=np.empty((job.rows, job.k), np.float32))  # fmt: skip
        job.found.ids[self.start : self.stop], job.found.scores[self.start : self.stop] = found.ids, found.scores
        job.answered += self.rows
        if job.answered == job.rows:
            job.future.set_result(job.found)


def search_together(pieces: list[Piece]) -> list[SearchResult]:
    """One index call for pieces of one model: the largest k, then each piece's rows cut to its own k (still exact)."""
    codes, k, exclude, scales = merged(pieces)
    return split(pieces, pieces[0].job.model.index.search(codes, k, exclude=exclude, query_scales=scales))


async def search_together_async(pieces: list[Piece]) -> list[SearchResult]:
    """``search_together`` on the event loop, for an index whose backend waits on the search process."""
    codes, k, exclude, scales = merged(pieces)
    index = pieces[0].job.model.index
    return split(pieces, await index.search_async(codes, k, exclude=exclude, query_scales=scales))


def merged(
    pieces: list[Piece],
) -> tuple[npt.NDArray[Any], int, list[npt.NDArray[np.int64]], npt.NDArray[np.floating] | None]:
    """The pieces' queries as one search: codes, the largest k, exclusions and scales, row by row."""
    k = max(piece.job.k for piece in pieces)
    parts = [piece.job.codes[piece.start : piece.stop] for piece in pieces]
    codes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    scales = None
    if pieces[0].job.scales is not None:
        scales = np.concatenate([p.job.scales[p.start : p.stop] for p in pieces if p.job.scales is not None])
    return codes, k, [items for p in pieces for items in p.job.exclude[p.start : p.stop]], scales


def split(pieces: list[Piece], result: SearchResult) -> list[SearchResult]:
    """Each piece's rows of a merged search, cut to its job's k."""
    answers, first = [], 0
    for piece in pieces:
        rows, k = slice(first, first + piece.rows), piece.job.k
        answers.append(SearchResult(ids=result.ids[rows, :k], scores=result.scores[rows, :k]))
        first += piece.rows
    return answers


class MicroBatcher:
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
        thread_setup: Callable[[], None] | None = None,
        in_flight: int = 1,
    ) -> None:
        """``thread_setup`` runs once in each search thread (per-thread settings such as OpenMP's thread count).

        ``in_flight``: batches searched at once. One for an index in this process (its owner thread); more where
        the index answers through another process (the search process), so that requests arriving while a batch
        is away go there at once instead of waiting for it to come back."""
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch  # (batch size, seconds in the index), for metrics
        self._queue: asyncio.Queue[SearchJob] = asyncio.Queue()
        self._pending: list[SearchJob] = []  # jobs with rows not yet searched, oldest first
        self._executor = ThreadPoolExecutor(
            max_workers=in_flight, thread_name_prefix="item-index", initializer=thread_setup
        )
        self._slots = asyncio.Semaphore(in_flight)
        self._searching: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Answer what is queued, then stop (graceful shutdown)."""
        while (
            (not self._queue.empty() or self._pending or self._searching)
            and self._task is not None
            and not self._task.done()
        ):
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def search(
        self,
        model: Any,
        code: npt.NDArray[Any],
        k: int,
        *,
        exclude: npt.NDArray[np.int64] | None = None,
        scales: npt.NDArray[np.floating] | None = None,
    ) -> Answer:
        """One query's item rows and scores, best first."""
        excluded = [exclude if exclude is not None else NO_ITEMS]
        found = await self.search_many(
            model, code[None], k, exclude=excluded, scales=None if scales is None else scales[None]
        )
        return found.ids[0], found.scores[0]

    async def search_many(
        self,
        model: Any,
        codes: npt.NDArray[Any],
        k: int,
        *,
        exclude: list[npt.NDArray[np.int64]],
        scales: npt.NDArray[np.floating] | None = None,
    ) -> SearchResult:
        """Several queries as one job: they are searched together, with whatever else is queued."""
        future: asyncio.Future[SearchResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(SearchJob(model, codes, k, exclude, scales, future))
        return await future

    async def _collect(self) -> list[Piece]:
        """Up to ``max_batch`` rows: what queued during the last search, then what arrives within ``max_wait_ms``.

        No job puts more than a quarter of a batch into one search: a request of many users is searched in pieces,
        and one of a single user that arrives meanwhile waits for one small piece at most. Smaller jobs go first;
        the oldest job always takes its share of each batch, so none waits forever behind smaller ones."""
        if not self._pending:
            self._pending.append(await self._queue.get())
        deadline = time.monotonic() + self.max_wait_s
        while True:
            while not self._queue.empty():
                self._pending.append(self._queue.get_nowait())
            self._pending = [job for job in self._pending if not job.future.done()]  # requests that gave up
            remaining = deadline - time.monotonic()
            if sum(job.left for job in self._pending) >= self.max_batch or remaining <= 0:
                break
            try:
                self._pending.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        if not self._pending:
            return []
        room = self.max_batch
        share = max(1, self.max_batch // 4)
        oldest = self._pending[0]
        pieces = [oldest.take(min(oldest.left, share))]
        room -= pieces[0].rows
        for job in sorted(self._pending[1:], key=lambda job: job.left):
            if room == 0:
                break
            pieces.append(job.take(min(job.left, room, share)))
            room -= pieces[-1].rows
        self._pending = [job for job in self._pending if job.left]
        return pieces

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # a free slot first: meanwhile what arrives queues up for one batch
            try:
                pieces = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            searching = asyncio.get_running_loop().create_task(self._search(pieces))
            self._searching.add(searching)
            searching.add_done_callback(self._searching.discard)

    async def _search(self, pieces: list[Piece]) -> None:
        """Search one collected batch (one index call per model snapshot), answer its pieces, free its slot."""
        loop = asyncio.get_running_loop()
        groups: dict[int, list[Piece]] = {}
        for piece in pieces:
            groups.setdefault(id(piece.job.model), []).append(piece)
        try:
            for group in groups.values():
                started = time.perf_counter()
                rows = sum(piece.rows for piece in group)
                try:
                    if group[0].job.model.index.waits_on_peer:  # the search process answers: wait on this loop
                        answers = await search_together_async(group)
                    else:
                        answers = await loop.run_in_executor(self._executor, search_together, group)
                except Exception as error:  # a failed search fails its requests, not the batcher
                    if isinstance(error, SearchUnavailable):  # an outage the requests report (503), not a bug
                        log.warning("batched search of %d queries: %s", rows, error)
                    else:
                        log.exception("batched search of %d queries failed", rows)
                    for piece in group:
                        if not piece.job.future.done():
                            piece.job.future.set_exception(error)
                    continue
                if self.on_batch is not None:
                    self.on_batch(rows, time.perf_counter() - started)
                for piece, answer in zip(group, answers, strict=True):
                    piece.answer(answer)
        finally:
            self._slots.release()
