"""Concurrent searches merged into one index call by the single owner of the index.

A search holds the index for a few hundred microseconds, most of it fixed cost; answering 32 users in
one call costs little more than answering one. Requests put their query on a queue and await a future;
one task takes the first waiting query, keeps collecting until ``max_batch`` queries or ``max_wait_ms``
have passed, and runs them as one search. An index in this process searches on its own thread (the event loop
never blocks on it). An index whose backend is the search process's waits for it on the event loop itself, with
several batches away at once (``in_flight``), so that what arrives meanwhile goes out without waiting. Each query
is answered from the model snapshot it was submitted with, so a model swap never mixes versions inside an answer;
queries of different snapshots go to separate searches.
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

from binrec.index.item_index import SearchResult
from binrec.service.search_client import SearchUnavailable

log = logging.getLogger(__name__)

Answer = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]  # item rows and scores, best first
NO_ITEMS = np.empty(0, np.int64)


@dataclass
class SearchJob:
    """Queries against one model snapshot (``model.index`` searches them): one user's, or a whole batch a worker
    sent the search process; each row keeps its own exclusions and scales."""

    model: Any
    codes: npt.NDArray[Any]  # [rows, width]
    k: int
    exclude: list[npt.NDArray[np.int64]]  # one per row (empty: none)
    scales: npt.NDArray[np.floating] | None  # [rows, ...] or None
    future: asyncio.Future[SearchResult] = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.codes)


def search_together(jobs: list[SearchJob]) -> list[SearchResult]:
    """One index call for jobs of one model: the largest k, then each job's rows cut to its own k (still exact)."""
    codes, k, exclude, scales = merged(jobs)
    return split(jobs, jobs[0].model.index.search(codes, k, exclude=exclude, query_scales=scales))


async def search_together_async(jobs: list[SearchJob]) -> list[SearchResult]:
    """``search_together`` on the event loop, for an index whose backend waits on the search process."""
    codes, k, exclude, scales = merged(jobs)
    return split(jobs, await jobs[0].model.index.search_async(codes, k, exclude=exclude, query_scales=scales))


def merged(
    jobs: list[SearchJob],
) -> tuple[npt.NDArray[Any], int, list[npt.NDArray[np.int64]], npt.NDArray[np.floating] | None]:
    """The jobs' queries as one search: codes, the largest k, exclusions and scales, row by row."""
    k = max(job.k for job in jobs)
    codes = np.concatenate([job.codes for job in jobs]) if len(jobs) > 1 else jobs[0].codes
    scales = None
    if jobs[0].scales is not None:
        scales = np.concatenate([job.scales for job in jobs if job.scales is not None])
    return codes, k, [items for job in jobs for items in job.exclude], scales


def split(jobs: list[SearchJob], result: SearchResult) -> list[SearchResult]:
    """Each job's rows of a merged search, cut to its own k."""
    answers, first = [], 0
    for job in jobs:
        rows = slice(first, first + job.rows)
        answers.append(SearchResult(ids=result.ids[rows, : job.k], scores=result.scores[rows, : job.k]))
        first += job.rows
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
        self._held: SearchJob | None = None  # collected but left for the next batch, which it opens
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
            (not self._queue.empty() or self._held is not None or self._searching)
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

    async def _collect(self) -> list[SearchJob]:
        """Jobs of up to ``max_batch`` queries in all (a larger job goes alone): what queued during the last search,
        then what arrives within ``max_wait_ms``. A job that would overflow the batch is held for the next one."""
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + job.rows > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            rows += job.rows
        return jobs

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # a free slot first: meanwhile what arrives queues up for one batch
            try:
                jobs = [job for job in await self._collect() if not job.future.done()]  # skip cancelled requests
            except BaseException:
                self._slots.release()
                raise
            searching = asyncio.get_running_loop().create_task(self._search(jobs))
            self._searching.add(searching)
            searching.add_done_callback(self._searching.discard)

    async def _search(self, jobs: list[SearchJob]) -> None:
        """Search one collected batch (one index call per model snapshot), answer its jobs, free its slot."""
        loop = asyncio.get_running_loop()
        groups: dict[int, list[SearchJob]] = {}
        for job in jobs:
            groups.setdefault(id(job.model), []).append(job)
        try:
            for group in groups.values():
                started = time.perf_counter()
                try:
                    if group[0].model.index.waits_on_peer:  # the search process answers: wait on this loop
                        answers = await search_together_async(group)
                    else:
                        answers = await loop.run_in_executor(self._executor, search_together, group)
                except Exception as error:  # a failed search fails its requests, not the batcher
                    if isinstance(error, SearchUnavailable):  # an outage the requests report (503), not a bug
                        log.warning("batched search of %d queries: %s", sum(job.rows for job in group), error)
                    else:
                        log.exception("batched search of %d queries failed", sum(job.rows for job in group))
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(error)
                    continue
                if self.on_batch is not None:
                    self.on_batch(sum(job.rows for job in group), time.perf_counter() - started)
                for job, answer in zip(group, answers, strict=True):
                    if not job.future.done():
                        job.future.set_result(answer)
        finally:
            self._slots.release()
