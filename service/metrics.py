"""Prometheus metrics of one app instance (its own registry: tests run several apps in one process).

Under `recsys-serve --workers N` every worker is a process of its own and a scrape reaches one of them, so the
workers keep their values in prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, made by
`recsys-serve`) and every scrape renders the sum over all of them: counters and histograms add up, the
in-flight gauge sums the live workers, and ``recsys_model_info`` shows 1 for each version a live worker serves. A
worker that died without saying so (killed) leaves the gauges at the next scrape.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from service.workers import process_alive

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "recsys_request_seconds", "request latency by route and status", ["route", "status"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # Read from the socket and not yet answered: what a graceful shutdown still owes (uvicorn finishes these;
        # a request still in the kernel's buffers when the signal lands is refused, not answered).
        self.in_flight = Gauge(
            "recsys_requests_in_flight", "HTTP requests being answered", registry=self.registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.batch_size = Histogram(
            "recsys_search_batch_size", "queries answered by one index search (micro-batching)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.search_seconds = Histogram(
            "recsys_search_seconds", "time one batched index search holds the index",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.user_code_lookups = Counter(
            "recsys_user_code_lookups",
            "user-code lookups by where the code came from (lru, redis, bundle; events: derived from the user's "
            "recent events and read from Redis, events_recoded: derived on the request)",
            ["source"], registry=self.registry,
        )  # fmt: skip
        self.events = Counter(
            "recsys_events", "events posted to /events by outcome (accepted, duplicate, unknown_item)", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.redis_errors = Counter(
            "recsys_redis_errors", "Redis calls that failed or timed out", registry=self.registry
        )
        self.fallbacks = Counter(
            "recsys_popular_fallbacks", "users answered by popularity (unknown to the model)", registry=self.registry
        )
        self.model_info = Gauge(
            "recsys_model_info", "1 for the model version being served", ["model_version"], registry=self.registry,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self._version: str | None = None
        self.workers = Gauge(
            "recsys_workers", "worker processes of this server serving a model", registry=self.registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_loads = Counter(
            "recsys_model_loads", "model (re)loads by outcome", ["outcome"], registry=self.registry
        )
        # With RECSYS_SEARCH_PROCESS: what the search process said of each search of this worker's queries.
        self.owner_batch_size = Histogram(
            "recsys_search_process_batch_size", "queries of all workers the search process searched together",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.owner_search_seconds = Histogram(
            "recsys_search_process_search_seconds", "time of the search process's backend call",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.owner_queued_seconds = Histogram(
            "recsys_search_process_queued_seconds", "time a worker's queries waited in the search process",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.search_seconds.observe(seconds)

    def observe_owner_search(self, merged: int, search_s: float, queued_s: float) -> None:
        """One search through the search process, as it reports it (the worker's round trip is ``search_seconds``)."""
        self.owner_batch_size.observe(merged)
        self.owner_search_seconds.observe(search_s)
        self.owner_queued_seconds.observe(queued_s)

    def serving(self, version: str) -> None:
        if self._version is not None:  # its multiprocess file keeps the value a clear() only forgets here
            self.model_info.labels(model_version=self._version).set(0)
        if not self.multiprocess():  # there, clear() cannot reach the files: the 0 above is what a scrape reads
            self.model_info.clear()
        self.model_info.labels(model_version=version).set(1)
        self._version = version

    @staticmethod
    def multiprocess() -> bool:
        return bool(os.environ.get(MULTIPROCESS_ENV))

    def render(self) -> bytes:
        if not self.multiprocess():
            return generate_latest(self.registry)
        forget_dead_workers(Path(os.environ[MULTIPROCESS_ENV]))
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def retire(self) -> None:
        """At a worker's exit: its live gauges leave the sums."""
        if self.multiprocess():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of workers that died without retiring (killed, or crashed): their files would keep their
    last values in every sum, a worker counted twice and requests in flight that nobody answers. Counters and
    histograms stay: what a dead worker counted did happen."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]
