"""A worker's view of the search backend that lives in the search process (``RECSYS_SEARCH_PROCESS``).

Each uvicorn worker that holds its own GPU index also holds its own CUDA context, and the GPU time-slices between
the contexts: the workers' small searches then queue behind each other instead of sharing the device. With a
search process, one process per host owns the GPU backend, and every worker sends it the queries of its
micro-batches; the search process merges what arrives from all workers into one search.

Only the backend's raw search crosses the socket: the worker's own ``ItemIndex`` wraps a ``RemoteBackend`` and
does everything else where the request is (query forms, over-fetching past seen items, filtering, exact re-ranking),
so the per-query work spreads over the workers, and answers are those of an in-process index by construction.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from binrec.index.retrieval.base import SearchBackend, TopK
from binrec.service.search_wire import Failed, Found, Message, Open, Opened, Refused, Search, WireError, receive

OPEN_TIMEOUT_S = 900.0  # loading, checking and warming a catalogue of tens of millions of items takes minutes

# (queries the search process searched together, seconds of that search, seconds these queries waited for it)
SearchObserver = Callable[[int, float, float], None]


class SearchUnavailable(RuntimeError):
    """The search process could not be reached or failed to answer in time; the request gets a 503."""


class RemoteBackend(SearchBackend):
    """The search process's backend for one bundle, reached over its Unix socket.

    Example::

        backend = RemoteBackend.open(Path("/run/recsys/search.sock"), bundle.path, timeout_s=2.0)
        index = ItemIndex(backend, n_items=backend.n_items, layout=bundle.layout, dim=bundle.dim)
    """

    def __init__(
        self,
        socket_path: Path,
        bundle_path: Path,
        opened: Opened,
        connection: socket.socket,
        *,
        timeout_s: float,
        observe: SearchObserver | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.bundle_path = str(bundle_path)
        self.opened = opened
        self.name = opened.backend
        self.n_items = opened.n_items
        self.query_dtype = np.dtype(opened.query_dtype).type
        self.distance_dtype = np.dtype(opened.distance_dtype).type
        self.timeout_s = timeout_s
        self.observe = observe
        # One exchange at a time per connection; a worker with several searches in flight takes several.
        self._idle: list[socket.socket] = [connection]
        self._lock = threading.Lock()
        weakref.finalize(self, close_all, self._idle)

    @classmethod
    def open(
        cls, socket_path: Path, bundle_path: Path, *, timeout_s: float, observe: SearchObserver | None = None
    ) -> RemoteBackend:
        """Have the search process load (or reuse) the bundle's index; ``ValueError`` if it refuses the bundle."""
        connection = _connect(socket_path)
        try:
            opened = _exchange(connection, Open(str(bundle_path)), OPEN_TIMEOUT_S)
        except BaseException:
            connection.close()
            raise
        if not isinstance(opened, Opened):
            connection.close()
            raise SearchUnavailable(f"search process: {type(opened).__name__} in answer to opening {bundle_path}")
        return cls(socket_path, bundle_path, opened, connection, timeout_s=timeout_s, observe=observe)

    @property
    def width(self) -> int:
        return self.opened.width

    @property
    def max_k(self) -> int:
        return self.opened.max_k

    @property
    def on_gpu(self) -> bool:
        return self.opened.on_gpu

    @property
    def memory_bytes(self) -> int:
        return 0  # the items live in the search process

    @property
    def padding_distance(self) -> float:
        return self.opened.padding_distance

    def answers(self, timeout_s: float) -> bool:
        """Whether the search process answers within ``timeout_s`` (it describes this bundle's backend again)."""
        try:
            return isinstance(self._pooled_exchange(Open(self.bundle_path), timeout_s), Opened)
        except (SearchUnavailable, ValueError):
            return False

    def _search(self, queries: npt.NDArray[Any], k: int) -> TopK:
        found = self._pooled_exchange(Search(self.bundle_path, k, queries), self.timeout_s)
        shape = (len(queries), k)
        if not isinstance(found, Found) or found.ids.shape != shape or found.distances.shape != shape:
            raise SearchUnavailable(f"search process: {type(found).__name__} does not answer {len(queries)} × {k}")
        if self.observe is not None:
            self.observe(found.merged, found.search_s, found.queued_s)
        return TopK(found.distances, found.ids)

    def _pooled_exchange(self, request: Message, timeout_s: float) -> Message:
        """``_exchange`` on an idle connection (a fresh one when all are busy or the last one failed)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = _connect(self.socket_path)
        try:
            answer = _exchange(connection, request, timeout_s)
        except BaseException:  # a reply may still come on this connection: never read it as another's
            connection.close()
            raise
        with self._lock:
            self._idle.append(connection)
        return answer


def close_all(connections: list[socket.socket]) -> None:
    for connection in connections:
        connection.close()


def _connect(socket_path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(socket_path))
    except OSError as error:
        connection.close()
        raise SearchUnavailable(f"search process at {socket_path}: {error}") from error
    return connection


def _exchange(connection: socket.socket, request: Message, timeout_s: float) -> Message:
    """Send one message, read its answer within ``timeout_s``; a refusal comes back as ``ValueError``."""
    try:
        connection.settimeout(timeout_s)
        connection.sendall(request.frame())
        answer = receive(connection)
    except TimeoutError as error:
        raise SearchUnavailable(f"search process: no answer within {timeout_s:g} s") from error
    except (OSError, WireError) as error:  # ConnectionError is an OSError
        raise SearchUnavailable(f"search process: {error}") from error
    if isinstance(answer, Refused):
        raise ValueError(answer.error)
    if isinstance(answer, Failed):
        raise SearchUnavailable(f"search process: {answer.error}")
    return answer
