"""The search process: one owner of the item index's backend per host, answering every worker's searches.

``recsys-serve`` starts it (``RECSYS_SEARCH_PROCESS=true``) before its workers and passes them its socket. A
worker opens the bundle it serves here (``RemoteBackend.open``): the first open loads, self-checks and warms the
index, later ones reuse it, so a hot swap costs one load however many workers follow it. The two most recently
opened bundles stay loaded, which covers workers that are mid-swap; a search for one dropped since loads it again.

One thread serves, in a loop: read every frame the workers have sent, search all the queries that arrived for a
bundle in one backend call (up to ``max_batch`` queries at a time), write the answers. While one search runs on the
GPU the next batch gathers in the sockets' buffers, so merging costs no waiting and no hand-off between threads:
no event loop, futures or locks on the path of a search. Loading a bundle runs on a thread of its own, and searches
of the bundles already loaded go on meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from index.item_index import ItemIndex
from index.retrieval.faiss_backend import set_cpu_threads
from service.logs import configure_logging
from service.model import SWITCH_INTERVAL_S, ModelLoader, ModelLoadError
from service.search_wire import (
    Failed,
    Found,
    FrameBuffer,
    Message,
    Open,
    Opened,
    Refused,
    Search,
    WireError,
    decode,
)
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
KEPT_MODELS = 2  # the serving bundle and the one workers are swapping to (or from)
READ_BYTES = 1 << 20


def describe(index: ItemIndex) -> Opened:
    """What a worker's ``RemoteBackend`` mirrors of the index's backend."""
    backend = index.retrieval
    if backend is None:  # no items: the worker searches nothing
        return Opened(0, "none", False, 0, "uint8", "int32", 0.0, 0, 0)
    return Opened(
        n_items=backend.n_items, backend=backend.name, on_gpu=backend.on_gpu, width=backend.width,
        query_dtype=np.dtype(backend.query_dtype).name, distance_dtype=np.dtype(backend.distance_dtype).name,
        padding_distance=float(backend.padding_distance), max_k=backend.max_k, fast_k=backend.fast_k,
    )  # fmt: skip


class Connection:
    """One worker's socket (non-blocking): frames read so far, answers not yet written."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameBuffer()
        self.outgoing = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> None:
        self.outgoing += message.frame()
        self.flush()

    def flush(self) -> None:
        """Write what the socket takes now; the rest waits for the socket to be writable."""
        while self.outgoing and not self.closed:
            try:
                sent = self.sock.send(self.outgoing)
            except BlockingIOError:
                return
            except OSError:  # the worker went away: its answers have nobody to go to
                self.closed = True
                return
            del self.outgoing[:sent]


@dataclass(frozen=True)
class Pending:
    """A search request accepted for the next backend call."""

    connection: Connection
    index: ItemIndex
    search: Search
    arrived: float


def merged_batches(pending: list[Pending], max_batch: int) -> list[list[Pending]]:
    """Searches merged per index into backend calls of at most ``max_batch`` queries (a larger search alone). A
    search past the backend's fast path (``SearchBackend.fast_k``: a user skipping thousands of seen items) is merged
    only with others like it: one call searches every query at its largest fetch, and would take the ordinary
    searches of every worker onto the slow path with it."""
    groups: dict[tuple[int, bool], list[Pending]] = {}
    for request in pending:
        backend = request.index.retrieval
        slow = backend is not None and request.search.fetch > backend.fast_k
        groups.setdefault((id(request.index), slow), []).append(request)
    batches: list[list[Pending]] = []
    for group in groups.values():
        batch: list[Pending] = []
        rows = 0
        for request in group:
            size = len(request.search.queries)
            if batch and rows + size > max_batch:
                batches.append(batch)
                batch, rows = [], 0
            batch.append(request)
            rows += size
        batches.append(batch)
    return batches


class SearchOwner:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.loader = ModelLoader.for_search_process(settings)
        # One worker sends up to batch_max_size queries at once; one search merges one batch from each, the largest
        # search the index is warmed for.
        self.max_batch = self.loader.warm_batch
        self.indexes: OrderedDict[str, ItemIndex] = OrderedDict()
        self.loading: dict[str, Future[ItemIndex]] = {}
        self.waiting: dict[str, list[tuple[Connection, Message, float]]] = {}  # requests for bundles being loaded
        self.searches: list[Pending] = []
        self.load_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-load")
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = socket.socketpair()
        self.stopping = False

    # --- requests -------------------------------------------------------------------------------------------------

    def receive(self, connection: Connection) -> None:
        """Read what ``connection`` has sent and take every whole request in it."""
        try:
            data = connection.sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker went away
            self.close(connection)
            return
        try:
            frames = connection.frames.feed(data)
        except WireError as error:  # the stream's framing is lost: say why, then close it
            connection.send(Refused(str(error)))
            self.close(connection)
            return
        now = time.perf_counter()
        for header, arrays in frames:
            try:
                message = decode(header, arrays)
            except WireError as error:
                connection.send(Refused(str(error)))
                continue
            self.take(connection, message, now)

    def take(self, connection: Connection, message: Message, arrived: float) -> None:
        if not isinstance(message, Open | Search):
            connection.send(Refused(f"the search process takes Open and Search, not {type(message).__name__}"))
            return
        index = self.index(message.bundle, connection, message, arrived)
        if index is None:  # parked until the bundle has loaded
            return
        if isinstance(message, Open):
            connection.send(describe(index))
            return
        problem = self.check(index, message)
        if problem:
            connection.send(Refused(problem))
            return
        self.searches.append(Pending(connection, index, message, arrived))

    @staticmethod
    def check(index: ItemIndex, search: Search) -> str:
        """Why ``search`` cannot go into a merged search of ``index`` ('' if it can)."""
        backend, queries = index.retrieval, search.queries
        if backend is None:
            return "the bundle has no items to search"
        dtype = np.dtype(backend.query_dtype)
        if queries.ndim != 2 or queries.shape[1] != backend.width or queries.dtype != dtype:
            return f"queries must be [n, {backend.width}] {dtype}, got {queries.shape} {queries.dtype}"
        if not 1 <= search.fetch <= min(backend.max_k, backend.n_items):
            return f"fetch must be in 1..{min(backend.max_k, backend.n_items)}, got {search.fetch}"
        return ""

    # --- bundles --------------------------------------------------------------------------------------------------

    def index(self, bundle: str, connection: Connection, message: Message, arrived: float) -> ItemIndex | None:
        """The loaded index of ``bundle``; else None, with the request parked and the bundle loading."""
        if bundle in self.indexes:
            self.indexes.move_to_end(bundle)
            return self.indexes[bundle]
        self.waiting.setdefault(bundle, []).append((connection, message, arrived))
        if bundle not in self.loading:  # concurrent opens of one bundle share one load
            loading = self.load_thread.submit(self.load, bundle)
            loading.add_done_callback(lambda _: self.wake())
            self.loading[bundle] = loading
        return None

    def load(self, bundle: str) -> ItemIndex:
        index = self.loader.index(Path(bundle))
        log.info("search process loaded %s (backend %s)", bundle, index.backend)
        return index

    def finish_loads(self) -> None:
        """Keep each finished load and take the requests that waited for it (a failed load refuses them)."""
        for bundle, loading in [(b, f) for b, f in self.loading.items() if f.done()]:
            del self.loading[bundle]
            waiting = self.waiting.pop(bundle, [])
            try:
                self.indexes[bundle] = loading.result()
            except ModelLoadError as error:  # fails its requests, not the process; the next open retries
                if not error.refused:
                    log.exception("search process could not load %s", bundle)
                answer = Refused(str(error)) if error.refused else Failed(str(error))
                for connection, _, _ in waiting:
                    connection.send(answer)
                continue
            while len(self.indexes) > KEPT_MODELS:
                dropped, _ = self.indexes.popitem(last=False)
                log.info("search process dropped %s", dropped)
            gc.freeze()  # the loaded index's objects: full collections skip them (recommender.Recommender._serving)
            for connection, message, arrived in waiting:
                if not connection.closed:
                    self.take(connection, message, arrived)

    # --- searches -------------------------------------------------------------------------------------------------

    def search(self) -> None:
        """Every accepted search, in the backend calls ``merged_batches`` makes of them."""
        pending, self.searches = self.searches, []
        for batch in merged_batches(pending, self.max_batch):
            self.answer(batch)

    def answer(self, batch: list[Pending]) -> None:
        """One backend call for ``batch``; each request gets its own rows, cut to its own fetch (still exact)."""
        backend = batch[0].index.retrieval
        assert backend is not None
        queries = [request.search.queries for request in batch]
        merged = np.concatenate(queries) if len(queries) > 1 else queries[0]
        started = time.perf_counter()
        try:
            found = backend.search(merged, max(request.search.fetch for request in batch))
        except Exception as error:  # a failed search fails its requests, not the process
            log.exception("search of %d queries failed", len(merged))
            for request in batch:
                request.connection.send(Failed(f"{type(error).__name__}: {error}"))
            return
        seconds = time.perf_counter() - started
        first = 0
        for request in batch:
            rows, fetch = slice(first, first + len(request.search.queries)), request.search.fetch
            first = rows.stop
            request.connection.send(
                Found(found.ids[rows, :fetch], found.distances[rows, :fetch], len(merged), seconds,
                      started - request.arrived)
            )  # fmt: skip

    # --- the loop -------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self.wake_write.send(b"\0")

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.wake()

    def close(self, connection: Connection) -> None:
        connection.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(connection.sock)
        connection.sock.close()

    def serve(self, socket_path: Path) -> None:
        """Listen on ``socket_path`` until SIGTERM or SIGINT; the socket appears once requests can be taken."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        set_cpu_threads(self.settings.search_threads)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(256)
        listener.setblocking(False)
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        log.info("search process listening on %s", socket_path)
        parent, checked = os.getppid(), time.monotonic()
        try:
            while not self.stopping:
                self.poll(0.0 if self.searches else 1.0, listener)
                self.finish_loads()
                if self.searches:
                    self.search()
                self.flush_all()
                if time.monotonic() - checked > 1.0:  # also stop when recsys-serve is gone (killed, so it could not)
                    checked = time.monotonic()
                    if os.getppid() != parent:
                        log.error("recsys-serve (pid %d) is gone: the search process stops", parent)
                        break
        finally:
            self.load_thread.shutdown(wait=False, cancel_futures=True)
            for key in list(self.selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()

    def poll(self, timeout: float, listener: socket.socket) -> None:
        for key, events in self.selector.select(timeout):
            if key.data == "listener":
                with contextlib.suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setblocking(False)
                    self.selector.register(sock, selectors.EVENT_READ, Connection(sock))
            elif key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    self.wake_read.recv(4096)
            elif events & selectors.EVENT_READ:
                self.receive(key.data)
            if isinstance(key.data, Connection) and events & selectors.EVENT_WRITE and not key.data.closed:
                key.data.flush()

    def flush_all(self) -> None:
        """Connections whose answers did not all fit in their sockets wait for them to be writable, others not."""
        for key in list(self.selector.get_map().values()):
            connection = key.data
            if not isinstance(connection, Connection):
                continue
            if connection.closed:
                self.close(connection)
                continue
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outgoing else 0)
            if key.events != wanted:
                self.selector.modify(connection.sock, wanted, connection)


def as_environment(overrides: dict[str, Any]) -> dict[str, str]:
    """Settings given on the command line, as the ``RECSYS_*`` variables a child process reads them from."""
    return {f"RECSYS_{name.upper()}": str(value) for name, value in overrides.items()}


class SearchProcessHandle:
    """The search process as ``recsys-serve`` runs it: started before the workers, stopped after them.

    If it exits while the service runs, the service stops too (SIGTERM to itself, so uvicorn drains), rather than
    answer 503 forever: the orchestrator restarts the whole server.
    """

    def __init__(self, process: subprocess.Popen[bytes], socket_path: Path) -> None:
        self.process = process
        self.socket_path = socket_path
        # How the service is told to stop when this process dies. By default SIGTERM to itself, which uvicorn's
        # supervisor of several workers turns into a drain and exit; a single-process server is told directly
        # (``Server.should_exit``), since uvicorn re-raises a SIGTERM it handled and the process would die of it
        # before saying why or removing the socket's folder.
        self.on_failure: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self._stopping = threading.Event()
        threading.Thread(target=self._watch, name="search-process-watch", daemon=True).start()

    @property
    def failed(self) -> bool:
        return self.process.poll() is not None and not self._stopping.is_set()

    @classmethod
    def start(cls, stack: contextlib.ExitStack, overrides: dict[str, Any]) -> SearchProcessHandle:
        """Start it with the service's settings; return once its socket takes connections (RuntimeError if not)."""
        runtime = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys-search-")))
        socket_path = runtime / "search.sock"
        process = subprocess.Popen(
            [sys.executable, "-m", "service.search_process", "--socket", str(socket_path)],
            env={**os.environ, **as_environment(overrides)},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not socket_path.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the search process exited with code {process.returncode} before it listened")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the search process did not listen within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        handle = cls(process, socket_path)
        stack.callback(handle.stop)
        return handle

    def stop(self) -> None:
        self._stopping.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _watch(self) -> None:
        code = self.process.wait()
        if not self._stopping.is_set():
            log.error("the search process exited with code %d: stopping the service", code)
            self.on_failure()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.search_process",
        description="The item-index owner that recsys-serve starts with RECSYS_SEARCH_PROCESS=true (settings from "
        "RECSYS_* as the service reads them).",
    )
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    configure_logging(settings.log_level, settings.log_format)
    SearchOwner(settings).serve(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
