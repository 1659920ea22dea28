"""The arrays of an ``.npz`` file, the large ones memory-mapped where they lie inside the archive.

``np.load`` of an archive reads every array into the process. ``np.savez`` stores its members uncompressed, so each
member's ``.npy`` bytes lie contiguous in the file and can be mapped read-only like a ``.npy`` file: the processes
that load one bundle (the service's workers, its search process) then share the pages of its seen matrix and its
cold-start section through the page cache, and read only the pages a request touches.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, …, file name length, extra field length
HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
MAP_AT_LEAST = 1 << 20  # smaller members are read: a map costs a file descriptor's worth of bookkeeping each


def read_npz(path: Path, *, map_at_least: int = MAP_AT_LEAST) -> dict[str, npt.NDArray[Any]]:
    """Every array of the archive at ``path`` by name (``.npy`` dropped): members of ``map_at_least`` bytes or more
    that are stored uncompressed are mapped read-only, the others read. ``ValueError`` (or ``zipfile.BadZipFile``)
    for a file that is not such an archive; object arrays are refused as ``np.load(allow_pickle=False)`` does."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    with path.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            if member.compress_type == zipfile.ZIP_STORED and member.file_size >= map_at_least:
                arrays[name] = _mapped_member(path, handle, member)
            else:
                with archive.open(member) as stream:
                    arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
    return arrays


def _mapped_member(path: Path, handle: Any, member: zipfile.ZipInfo) -> npt.NDArray[Any]:
    handle.seek(member.header_offset)
    signature, name_length, extra_length = LOCAL_HEADER.unpack(handle.read(LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise ValueError(f"member {member.filename!r}: no local header where the archive's directory says")
    start = member.header_offset + LOCAL_HEADER.size + name_length + extra_length
    handle.seek(start)
    version = np.lib.format.read_magic(handle)
    if version not in HEADERS:
        raise ValueError(f"member {member.filename!r}: .npy format version {version} is not read here")
    shape, fortran, dtype = HEADERS[version](handle)
    if dtype.hasobject:
        raise ValueError(f"member {member.filename!r}: object arrays cannot be loaded without pickle")
    offset = handle.tell()
    if offset - start + int(np.prod(shape)) * dtype.itemsize != member.file_size:
        raise ValueError(f"member {member.filename!r}: its header's shape does not fill its {member.file_size} bytes")
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    return np.asarray(mapped)  # a plain array viewing the map, which it keeps
