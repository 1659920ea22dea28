"""A worker's view of an item index that lives in the search process (``RECSYS_SEARCH_PROCESS``).

Each uvicorn worker that holds its own GPU index also holds its own CUDA context, and the GPU time-slices between
the contexts: the workers' small searches then queue behind each other instead of sharing the device. With a
search process, one process per host owns the index, and every worker sends its micro-batches there; the search
process merges what arrives from all workers into one search. ``RemoteItemIndex`` answers exactly like the
``ItemIndex`` it stands for (same ``search`` signature and results), so the rest of the service does not know.
"""

from __future__ import annotations

import socket
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from binrec.index.bundle import Bundle
from binrec.index.item_index import SearchResult, check_search_arguments
from binrec.service.search_wire import Arrays, Header, WireError, pack, receive


class SearchIndex(Protocol):
    """What the service needs of an index: an in-process ``ItemIndex`` or a ``RemoteItemIndex``."""

    @property
    def n_items(self) -> int: ...

    @property
    def backend(self) -> str: ...

    @property
    def on_gpu(self) -> bool: ...

    def warm(self, max_batch: int) -> object: ...

    def search(
        self,
        query_codes: npt.NDArray[Any],
        k: int,
        *,
        exclude: list[npt.NDArray[np.int64]] | None = None,
        query_scales: npt.NDArray[np.floating] | None = None,
    ) -> SearchResult: ...


class SearchUnavailable(RuntimeError):
    """The search process could not be reached or failed to answer; the request gets a 503."""


def search_request(
    bundle: str,
    query_codes: npt.NDArray[Any],
    k: int,
    exclude: list[npt.NDArray[np.int64]] | None,
    query_scales: npt.NDArray[np.floating] | None,
) -> bytes:
    """A search frame: the codes, each query's exclusions (lengths, then all items), its scales if any."""
    n_queries = len(query_codes)
    excluded = exclude if exclude is not None else [np.empty(0, np.int64)] * n_queries
    lengths = np.array([len(items) for items in excluded], dtype=np.int64)
    items = np.concatenate([np.asarray(e, dtype=np.int64) for e in excluded]) if n_queries else np.empty(0, np.int64)
    arrays: list[npt.NDArray[Any]] = [np.asarray(query_codes), lengths, items]
    if query_scales is not None:
        arrays.append(np.asarray(query_scales))
    return pack({"op": "search", "bundle": bundle, "k": k, "scales": query_scales is not None}, arrays)


def search_arguments(
    header: Header, arrays: Arrays
) -> tuple[npt.NDArray[Any], int, list[npt.NDArray[np.int64]], npt.NDArray[np.floating] | None]:
    """The inverse of ``search_request``: codes, k, per-query exclusions and scales."""
    if len(arrays) != (4 if header.get("scales") else 3) or not isinstance(header.get("k"), int):
        raise WireError("a search frame holds k, the codes, the exclusions and (optionally) the scales")
    codes, lengths, items = arrays[:3]
    if lengths.shape != (len(codes),) or int(lengths.sum()) != len(items) or (lengths < 0).any():
        raise WireError("exclusion lengths do not match the excluded items")
    bounds = np.cumsum(lengths)[:-1] if len(lengths) else np.empty(0, np.int64)
    scales = arrays[3] if header.get("scales") else None
    return codes, int(header["k"]), np.split(items, bounds), scales


class RemoteItemIndex:
    """The search process's index of one bundle, reached over its Unix socket.

    Example::

        index = RemoteItemIndex.open(Path("/run/recsys/search.sock"), bundle)
        result = index.search(bundle.user_codes[:8], 20)
    """

    def __init__(self, socket_path: Path, bundle_path: Path, info: Header, connection: socket.socket) -> None:
        self.socket_path = socket_path
        self.bundle_path = str(bundle_path)
        self.n_items = int(info["n_items"])
        self.backend = str(info["backend"])
        self._on_gpu = bool(info["on_gpu"])
        self._connection: socket.socket | None = connection
        self._lock = threading.Lock()  # one request at a time on the connection (searches and the load's warm-up)
        self._finalizer = weakref.finalize(self, connection.close)

    @property
    def on_gpu(self) -> bool:
        return self._on_gpu

    @classmethod
    def open(cls, socket_path: Path, bundle: Bundle) -> RemoteItemIndex:
        """Have the search process load (or reuse) ``bundle``'s index, verified and self-checked there."""
        connection = _connect(socket_path)
        try:
            info, _ = _exchange(connection, pack({"op": "open", "bundle": str(bundle.path)}))
        except BaseException:
            connection.close()
            raise
        if int(info["n_items"]) != bundle.manifest.n_items:
            connection.close()
            raise SearchUnavailable(f"the search process's index of {bundle.path} has {info['n_items']} items")
        return cls(socket_path, bundle.path, info, connection)

    def warm(self, max_batch: int) -> None:
        """Nothing to do here: the search process warms its own index when it loads it."""

    def search(
        self,
        query_codes: npt.NDArray[Any],
        k: int,
        *,
        exclude: list[npt.NDArray[np.int64]] | None = None,
        query_scales: npt.NDArray[np.floating] | None = None,
    ) -> SearchResult:
        check_search_arguments(query_codes, k, exclude)  # refused here, as ItemIndex refuses it, not after a trip
        request = search_request(self.bundle_path, query_codes, k, exclude, query_scales)
        with self._lock:
            if self._connection is None:  # the last exchange failed: try a fresh connection once
                self._connection = _connect(self.socket_path)
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, self._connection.close)
            try:
                _, arrays = _exchange(self._connection, request)
            except SearchUnavailable:
                self._connection.close()
                self._connection = None
                raise
        ids, scores = arrays
        return SearchResult(ids=ids.astype(np.int64, copy=False), scores=scores.astype(np.float32, copy=False))


def _connect(socket_path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(socket_path))
    except OSError as error:
        connection.close()
        raise SearchUnavailable(f"search process at {socket_path}: {error}") from error
    return connection


def _exchange(connection: socket.socket, request: bytes) -> tuple[Header, Arrays]:
    """Send one frame, read its answer; a refusal the search process explains comes back as ``ValueError``."""
    try:
        connection.sendall(request)
        header, arrays = receive(connection)
    except (OSError, WireError) as error:  # ConnectionError is an OSError
        raise SearchUnavailable(f"search process: {error}") from error
    if not header.get("ok"):
        if header.get("refused"):
            raise ValueError(str(header.get("error")))
        raise SearchUnavailable(f"search process: {header.get('error')}")
    return header, arrays
