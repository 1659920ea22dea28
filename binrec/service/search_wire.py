"""The frames the search process and the workers exchange over a Unix socket: a JSON header, then raw arrays.

Arrays travel as their bytes, never pickled: a frame from a confused or hostile peer can only fail to parse. The
header names each array's dtype and shape, so neither side needs to know the other's code layout in advance.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from asyncio import StreamReader
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

SIZES = struct.Struct("!II")  # header bytes, array bytes
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = frozenset({"uint8", "int64", "float32", "float64"})

Header = dict[str, Any]
Arrays = list[npt.NDArray[Any]]


class WireError(ValueError):
    """A frame that does not parse: a truncated, oversized or malformed message."""


def pack(header: Header, arrays: Sequence[npt.NDArray[Any]] = ()) -> bytes:
    """One frame: sizes, the JSON header (with each array's dtype and shape), the arrays' bytes."""
    contiguous = [np.ascontiguousarray(array) for array in arrays]
    described = {**header, "arrays": [[str(array.dtype), list(array.shape)] for array in contiguous]}
    meta = json.dumps(described).encode()
    body = b"".join(array.tobytes() for array in contiguous)
    return SIZES.pack(len(meta), len(body)) + meta + body


def unpack(meta: bytes, body: bytes) -> tuple[Header, Arrays]:
    """The header and the arrays of one frame (read-only views of ``body``)."""
    try:
        header = json.loads(meta)
        described = header.pop("arrays")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireError(f"malformed frame header: {error}") from error
    arrays: Arrays = []
    offset = 0
    for dtype, shape in described:
        if dtype not in ALLOWED_DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WireError(f"unsupported array {dtype} {shape}")
        count = math.prod(shape)
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(body):
            raise WireError("frame shorter than its arrays")
        arrays.append(np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += size
    if offset != len(body):
        raise WireError("frame longer than its arrays")
    return header, arrays


def _checked_sizes(prefix: bytes) -> tuple[int, int]:
    meta_size, body_size = SIZES.unpack(prefix)
    if meta_size > MAX_HEADER_BYTES:
        raise WireError(f"frame header of {meta_size} bytes")
    return meta_size, body_size


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("the search process closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(connection: socket.socket) -> tuple[Header, Arrays]:
    """One frame from a blocking socket."""
    meta_size, body_size = _checked_sizes(_receive_exactly(connection, SIZES.size))
    return unpack(_receive_exactly(connection, meta_size), _receive_exactly(connection, body_size))


async def read(reader: StreamReader) -> tuple[Header, Arrays]:
    """One frame from an asyncio stream (``IncompleteReadError`` when the peer has gone)."""
    meta_size, body_size = _checked_sizes(await reader.readexactly(SIZES.size))
    return unpack(await reader.readexactly(meta_size), await reader.readexactly(body_size))
