"""External ids ↔ bundle rows, over the bundle's ids file mapped read-only.

A Python list of 10M id strings and a dict from them to rows cost a process about 1.5 GB and tens of seconds to
build, and every service worker held its own. Here the ids stay in the file's pages (shared by every process that
maps the bundle through the page cache) and a process holds three numpy arrays, 20 bytes per id: where each line
starts, and the ids' 64-bit FNV-1a hashes sorted with their rows. A lookup is one binary search, then a comparison
of the bytes at the row it finds, so a hash collision costs a second comparison, never a wrong row.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data``: what ``line_hashes`` computes for every line at once."""
    value = FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & MASK64
    return value


def line_hashes(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """``fnv1a`` of each line (``data[starts[i] : starts[i + 1] - 1]``), a byte position of every line per pass:
    lines sorted longest first, so that each pass works on a prefix of them, and one long id costs a few passes
    over the lines that long, not over all of them."""
    lengths = np.diff(starts) - 1
    order = np.argsort(-lengths, kind="stable")
    first, remaining = starts[:-1][order], lengths[order]
    hashes = np.full(lengths.size, FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    longer = lengths.size  # lines longer than the current position
    for position in range(int(lengths.max(initial=0))):
        longer = int(np.searchsorted(-remaining, -position, side="left"))  # remaining is sorted descending
        view = hashes[:longer]
        view ^= data[first[:longer] + position]
        view *= prime  # uint64 arithmetic wraps, as FNV's does
    out = np.empty_like(hashes)
    out[order] = hashes
    return out


class IdMap(Sequence[str]):
    """A bundle's external ids: ``ids[row]`` is the id of that row, ``ids.row(id)`` the row of that id (None when
    unknown). Reads like the list of ids it replaces (index, slice, iterate, compare with a list).

    Example::

        ids = IdMap.open(bundle_dir / "user_ids.txt")
        row = ids.row("u42")         # None for an id the bundle does not hold
        names = ids.take(rows)       # the ids of an array of rows
    """

    def __init__(self, data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64]) -> None:
        """``data``: the file's bytes, one id per ``\\n``-terminated line; ``starts[i]`` where line i starts, and
        ``starts[-1]`` the end of the last line's newline."""
        self._data = data
        self._view = data.data  # a memoryview: slicing it costs a fraction of slicing the array
        self._starts = starts
        hashes = line_hashes(data, starts)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._rows = order.astype(np.int32 if len(order) < 2**31 else np.int64)

    @classmethod
    def open(cls, path: Path) -> IdMap:
        """The ids of a file of ``\\n``-terminated UTF-8 lines (the last one terminated too), mapped read-only."""
        size = path.stat().st_size
        if size == 0:
            data = np.zeros(0, dtype=np.uint8)
        else:
            data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))
        if data.size and data[-1] != ord("\n"):  # a last line without its newline: read, and given one
            data = np.append(data, np.uint8(ord("\n")))
        ends = np.flatnonzero(data == ord("\n"))
        starts = np.concatenate([[0], ends + 1]).astype(np.int64)
        ids = cls(data, starts)
        ids._check_utf8()
        return ids

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdMap:
        """An in-memory map of ``ids`` (what a file holding them, one per line, would give)."""
        encoded = [i.encode("utf-8") for i in ids]
        data = np.frombuffer(b"".join(e + b"\n" for e in encoded), dtype=np.uint8)
        lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
        return cls(data, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def _check_utf8(self) -> None:
        """Decode the whole file once (in blocks): a file that is not UTF-8 is refused at load, not by the request
        whose answer holds its bad line."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        block = 1 << 26
        for start in range(0, self._data.size, block):
            decoder.decode(bytes(self._data[start : start + block]), final=start + block >= self._data.size)

    def __len__(self) -> int:
        return int(self._starts.size - 1)

    def _bytes(self, row: int) -> bytes:
        return self._view[int(self._starts[row]) : int(self._starts[row + 1]) - 1].tobytes()

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        n = len(self)
        if not -n <= row < n:
            raise IndexError(f"row {row} of {n} ids")
        return self._bytes(row % n if row < 0 else row).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[row] for row in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdMap):
            return len(self) == len(other) and bool(np.array_equal(self._data, other._data))
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence semantics: compared, never hashed

    def take(self, rows: npt.NDArray[np.integer[Any]] | Sequence[int]) -> list[str]:
        """The ids of ``rows``, in order: their lines gathered into one buffer by numpy and decoded at once, since
        an answer of 20,000 items decoded one slice at a time holds the event loop for milliseconds."""
        at = np.asarray(rows, dtype=np.int64)
        if at.size == 0:
            return []
        if at.min() < 0 or at.max() >= len(self):
            raise IndexError(f"rows outside the {len(self)} ids")
        starts = self._starts[at]
        lengths = self._starts[at + 1] - starts  # each line with its newline
        ends = np.cumsum(lengths)
        positions = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
        text: str = self._data[positions].tobytes().decode("utf-8")
        return text.split("\n")[:-1]

    def row(self, external_id: str) -> int | None:
        """The row of ``external_id``; None when the bundle does not hold it."""
        key = external_id.encode("utf-8")
        hashed = np.uint64(fnv1a(key))
        at = int(np.searchsorted(self._hashes, hashed))
        while at < self._hashes.size and self._hashes[at] == hashed:
            row = int(self._rows[at])
            if self._bytes(row) == key:
                return row
            at += 1
        return None

    def distinct(self) -> bool:
        """Whether no id repeats: only ids whose hashes repeat are compared by their bytes."""
        same = np.flatnonzero(self._hashes[1:] == self._hashes[:-1])
        if same.size == 0:
            return True
        groups: dict[int, set[bytes]] = {}
        for at in np.unique(np.concatenate([same, same + 1])):
            seen = groups.setdefault(int(self._hashes[at]), set())
            value = self._bytes(int(self._rows[at]))
            if value in seen:
                return False
            seen.add(value)
        return True
