"""The messages the search process and the workers exchange over a Unix socket, and how they travel as frames.

A frame is its sizes, a JSON header, then raw arrays: arrays travel as their bytes, never pickled, so a frame from a
confused or hostile peer can only fail to parse. Every message is a typed, frozen dataclass; its scalar fields go in
the header (with the message's type and each array's dtype and shape), its array fields (``ARRAYS``) after it.

A worker sends ``Open`` (have the search process load a bundle's index) and ``Search`` (queries already in the
index's search form, and how many nearest items each needs); the search process answers ``Opened``, ``Found``,
``Refused`` (the request cannot be answered as sent: the worker raises ``ValueError``) or ``Failed`` (the search
process could not answer: ``SearchUnavailable``, a 503).
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

SIZES = struct.Struct("!II")  # header bytes, array bytes
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 30
ALLOWED_DTYPES = frozenset({"uint8", "int32", "int64", "float32", "float64"})

Header = dict[str, Any]
Arrays = list[npt.NDArray[Any]]


class WireError(ValueError):
    """A frame that does not parse: a truncated, oversized or malformed message."""


@dataclass(frozen=True)
class Message:
    """A message's scalar fields travel in the header; the fields named in ``ARRAYS`` as raw arrays."""

    ARRAYS: ClassVar[tuple[str, ...]] = ()

    def frame(self) -> bytes:
        header = {"type": type(self).__name__}
        header.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.ARRAYS})
        return pack(header, [getattr(self, name) for name in self.ARRAYS])


@dataclass(frozen=True)
class Open(Message):
    """Load (or reuse) the index of the bundle at ``bundle``, verified and self-checked there."""

    bundle: str


@dataclass(frozen=True)
class Opened(Message):
    """What a worker needs to know of an index the search process holds (a ``SearchBackend``'s description)."""

    n_items: int
    backend: str
    on_gpu: bool
    width: int
    query_dtype: str
    distance_dtype: str
    padding_distance: float
    max_k: int
    fast_k: int  # the largest fetch on the backend's fast path (SearchBackend.fast_k): workers group by it too


@dataclass(frozen=True)
class Search(Message):
    """The ``fetch`` nearest items of each query (rows of ``queries``, in the index's search form)."""

    ARRAYS: ClassVar[tuple[str, ...]] = ("queries",)
    bundle: str
    fetch: int
    queries: npt.NDArray[Any]


@dataclass(frozen=True)
class Found(Message):
    """A search's answer: ids and distances, nearest first; how many queries the search process searched together
    with these (``merged``), how long that search took and how long these queries waited for it."""

    ARRAYS: ClassVar[tuple[str, ...]] = ("ids", "distances")
    ids: npt.NDArray[np.int64]
    distances: npt.NDArray[Any]
    merged: int
    search_s: float
    queued_s: float


@dataclass(frozen=True)
class Refused(Message):
    """The request cannot be answered as it was sent (a bundle that does not load, a query of the wrong shape)."""

    error: str


@dataclass(frozen=True)
class Failed(Message):
    """The search process could not answer (a failed search); the request may succeed later."""

    error: str


MESSAGES: dict[str, type[Message]] = {kind.__name__: kind for kind in (Open, Opened, Search, Found, Refused, Failed)}
SCALARS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def decode(header: Header, arrays: Arrays) -> Message:
    """The message a frame holds; ``WireError`` if it is none of ``MESSAGES`` or its fields do not match."""
    kind = MESSAGES.get(header.pop("type", None))
    if kind is None:
        raise WireError("unknown message type")
    fields = {f.name: f.type for f in dataclasses.fields(kind)}
    scalars = {name for name in fields if name not in kind.ARRAYS}
    if set(header) != scalars or len(arrays) != len(kind.ARRAYS):
        raise WireError(f"a {kind.__name__} frame holds {sorted(fields)}")
    for name in scalars:
        expected = SCALARS[str(fields[name])]
        value = header[name]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise WireError(f"{kind.__name__}.{name} must be {fields[name]}, got {type(value).__name__}")
    return kind(**header, **dict(zip(kind.ARRAYS, arrays, strict=True)))


def pack(header: Header, arrays: list[npt.NDArray[Any]] | tuple[npt.NDArray[Any], ...] = ()) -> bytes:
    """One frame: sizes, the JSON header (with each array's dtype and shape), the arrays' bytes."""
    contiguous = [np.ascontiguousarray(array) for array in arrays]
    described = {**header, "arrays": [[str(array.dtype), list(array.shape)] for array in contiguous]}
    meta = json.dumps(described).encode()
    body = b"".join(array.tobytes() for array in contiguous)
    return SIZES.pack(len(meta), len(body)) + meta + body


def unpack(meta: bytes | memoryview, body: bytes | memoryview) -> tuple[Header, Arrays]:
    """The header and the arrays of one frame (read-only views of ``body``)."""
    try:
        header = json.loads(bytes(meta))
        described = header.pop("arrays")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireError(f"malformed frame header: {error}") from error
    arrays: Arrays = []
    offset = 0
    for entry in described if isinstance(described, list) else [None]:
        dtype, shape = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
        if dtype not in ALLOWED_DTYPES or not isinstance(shape, list):
            raise WireError(f"unsupported array {entry}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise WireError(f"unsupported array {entry}")
        count = math.prod(shape)
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(body):
            raise WireError("frame shorter than its arrays")
        arrays.append(np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += size
    if offset != len(body):
        raise WireError("frame longer than its arrays")
    return header, arrays


def checked_sizes(prefix: bytes) -> tuple[int, int]:
    meta_size, body_size = SIZES.unpack(prefix)
    if meta_size > MAX_HEADER_BYTES or body_size > MAX_BODY_BYTES:
        raise WireError(f"frame of {meta_size} + {body_size} bytes, over the limits")
    return meta_size, body_size


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(connection: socket.socket) -> Message:
    """One message from a blocking socket."""
    meta_size, body_size = checked_sizes(_receive_exactly(connection, SIZES.size))
    return decode(*unpack(_receive_exactly(connection, meta_size), _receive_exactly(connection, body_size)))


class FrameBuffer:
    """Bytes read from a non-blocking socket, handed back as whole frames once they have arrived."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[tuple[Header, Arrays]]:
        """Add ``data``; every frame now complete, in order (``WireError`` on one that cannot parse)."""
        self._data += data
        frames = []
        while len(self._data) >= SIZES.size:
            meta_size, body_size = checked_sizes(bytes(self._data[: SIZES.size]))
            end = SIZES.size + meta_size + body_size
            if len(self._data) < end:
                break
            frame = bytes(self._data[:end])
            del self._data[:end]
            frames.append(unpack(frame[SIZES.size : SIZES.size + meta_size], frame[SIZES.size + meta_size :]))
        return frames
