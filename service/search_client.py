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

import asyncio
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from index.retrieval.base import SearchBackend, TopK
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
    receive,
)

OPEN_TIMEOUT_S = 900.0  # loading, checking and warming a catalogue of tens of millions of items takes minutes

# (queries the search process searched together, seconds of that search, seconds these queries waited for it)
SearchObserver = Callable[[int, float, float], None]


class SearchUnavailable(RuntimeError):
    """The search process could not be reached or failed to answer in time; the request gets a 503."""


class RemoteBackend(SearchBackend):
    """The search process's backend for one bundle, reached over its Unix socket.

    ``search`` blocks (the bundle's open, its self-check, a caller on a thread); ``search_async`` is what a worker's
    micro-batcher awaits on its event loop: the frame goes out and the answer comes back through the loop's own
    socket callbacks, so a search costs the loop no thread hand-off and no fight for the GIL.

    Example::

        backend = RemoteBackend.open(Path("/run/recsys/search.sock"), bundle.path, timeout_s=2.0)
        index = ItemIndex(backend, n_items=backend.n_items, layout=bundle.layout, dim=bundle.dim)
    """

    waits_on_peer = True

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
        self._idle_channels: list[SearchChannel] = []  # the event loop's connections, used from that loop only
        weakref.finalize(self, close_all, self._idle, self._idle_channels)

    @classmethod
    def open(
        cls, socket_path: Path, bundle_path: Path, *, timeout_s: float, observe: SearchObserver | None = None
    ) -> RemoteBackend:
        """Have the search process load (or reuse) the bundle's index; ``ValueError`` if it refuses the bundle."""
        connection = _connect(socket_path, OPEN_TIMEOUT_S)
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
    def fast_k(self) -> int:
        return self.opened.fast_k

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

    @contextmanager
    def waiting(self, timeout_s: float) -> Iterator[None]:
        """Searches made inside wait up to ``timeout_s`` for their answers instead of the serving timeout. A model
        still loading (a worker starting, a reload) serves nobody yet: a search process busy or paused for a moment
        then delays the load instead of failing it, which would stop a starting worker's whole server or leave a
        reloading worker on its old version."""
        serving = self.timeout_s
        self.timeout_s = timeout_s
        try:
            yield
        finally:
            self.timeout_s = serving

    def close(self) -> None:
        """Close the idle connections (a worker stopping: its event loop's go before the loop ends)."""
        with self._lock:  # emptied in place: the finalizer holds these very lists
            close_all(list(self._idle), list(self._idle_channels))
            self._idle.clear()
            self._idle_channels.clear()

    def _search(self, queries: npt.NDArray[Any], k: int) -> TopK:
        return self._top_k(self._pooled_exchange(Search(self.bundle_path, k, queries), self.timeout_s), queries, k)

    async def _search_async(self, queries: npt.NDArray[Any], k: int) -> TopK:
        loop = asyncio.get_running_loop()
        while self._idle_channels and self._idle_channels[-1].loop is not loop:  # left by a loop that has ended
            self._idle_channels.pop().close_soon()
        channel = (
            self._idle_channels.pop()
            if self._idle_channels
            else await SearchChannel.connect(self.socket_path, self.timeout_s)
        )
        try:
            found = await channel.exchange(Search(self.bundle_path, k, queries), self.timeout_s)
        except BaseException:  # a reply may still come on this connection: never read it as another's
            channel.close()
            raise
        self._idle_channels.append(channel)
        return self._top_k(found, queries, k)

    def _top_k(self, found: Message, queries: npt.NDArray[Any], k: int) -> TopK:
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
            connection = _connect(self.socket_path, timeout_s)
        try:
            answer = _exchange(connection, request, timeout_s)
        except BaseException:  # a reply may still come on this connection: never read it as another's
            connection.close()
            raise
        with self._lock:
            self._idle.append(connection)
        return answer


def close_all(connections: list[socket.socket], channels: list[SearchChannel]) -> None:
    for connection in connections:
        connection.close()
    for channel in channels:  # the collector may run this on any thread; the transport belongs to its loop's
        channel.close_soon()


class SearchChannel(asyncio.Protocol):
    """One connection to the search process on an event loop, one exchange at a time: the answer is read by the
    loop's callbacks as it arrives and handed to the exchange that waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.frames = FrameBuffer()
        self.waiter: asyncio.Future[Message] | None = None
        self.lost: Exception | None = None

    @classmethod
    async def connect(cls, socket_path: Path, timeout_s: float) -> SearchChannel:
        """A new connection within ``timeout_s``: a search process that stopped accepting fills its backlog with
        the connections of the requests that gave up on it, and a connect past that may wait as long as it stays
        stopped (a blocking one does)."""
        try:
            async with asyncio.timeout(timeout_s):
                _, channel = await asyncio.get_running_loop().create_unix_connection(cls, str(socket_path))
        except TimeoutError as error:
            raise SearchUnavailable(f"search process at {socket_path}: no connection within {timeout_s:g} s") from error
        except OSError as error:
            raise SearchUnavailable(f"search process at {socket_path}: {error}") from error
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except WireError as error:
            self._fail(error)
            return
        for header, arrays in frames:
            if self.waiter is None or self.waiter.done():  # nobody asked: the stream is out of step
                self._fail(WireError("an answer nobody asked for"))
                return
            try:
                self.waiter.set_result(decode(header, arrays))
            except WireError as error:
                self.waiter.set_exception(error)

    def connection_lost(self, error: Exception | None) -> None:
        self._fail(error or ConnectionError("the search process closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.lost = error
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close_soon(self) -> None:
        """``close`` from any thread (on its own loop's thread: at once)."""
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.close()
        else:
            self.loop.call_soon_threadsafe(self.close)

    async def exchange(self, request: Message, timeout_s: float) -> Message:
        """``_exchange``'s contract on the event loop: the answer within ``timeout_s``, a refusal as ``ValueError``."""
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise SearchUnavailable(f"search process: {self.lost or 'the connection is closed'}")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request.frame())
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self.waiter
        except TimeoutError as error:
            raise SearchUnavailable(f"search process: no answer within {timeout_s:g} s") from error
        except (OSError, WireError) as error:  # ConnectionError is an OSError
            raise SearchUnavailable(f"search process: {error}") from error
        return checked_answer(answer)


def _connect(socket_path: Path, timeout_s: float) -> socket.socket:
    """``SearchChannel.connect``'s contract, blocking."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(timeout_s)
        connection.connect(str(socket_path))
    except TimeoutError as error:
        connection.close()
        raise SearchUnavailable(f"search process at {socket_path}: no connection within {timeout_s:g} s") from error
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
    return checked_answer(answer)


def checked_answer(answer: Message) -> Message:
    """The answer, unless it says the request was refused (``ValueError``) or failed (``SearchUnavailable``)."""
    if isinstance(answer, Refused):
        raise ValueError(answer.error)
    if isinstance(answer, Failed):
        raise SearchUnavailable(f"search process: {answer.error}")
    return answer
