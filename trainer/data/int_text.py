"""Tables of non-negative integers as delimited text, written and read with whole-array NumPy operations.

Hundreds of millions of rows are out of reach of a per-row Python loop (``csv``, ``np.savetxt``,
``str.split``): here a row costs a few array operations per digit, and NumPy releases the GIL in
them, so blocks of rows convert in parallel threads. The reader is strict on purpose: it accepts
only the canonical spelling of each number (no sign, space, quote or leading zero, at most 18
digits, every line ``n_columns`` fields ending in ``\\n``), so that whatever it accepts reads the
same as the exact, line-checking parsers of ``trainer.data.formats``; anything else is refused
with ``None`` and left to them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from index.threads import usable_cores

_NEWLINE = ord("\n")
_ZERO = ord("0")
MAX_DIGITS = 18  # 10**18 - 1 < 2**63 - 1: any 18-digit number fits an int64
_POWERS_OF_TEN = 10 ** np.arange(1, MAX_DIGITS + 1, dtype=np.int64)
BLOCK_BYTES = 1 << 22  # per thread: parsing a block keeps about 10 times its size alive


def format_rows(columns: Sequence[npt.NDArray[np.int64]], sep: str) -> bytes:
    """The text of rows ``columns[0][r] sep columns[1][r] ... \\n``, for non-negative integer columns.

    Each column becomes a fixed-width block of digit bytes; the leading zeros are then dropped with
    one boolean mask over the whole block, which keeps the rows in order.
    """
    n = int(columns[0].shape[0])
    if n == 0:
        return b""
    blocks: list[npt.NDArray[np.uint8]] = []
    keep: list[npt.NDArray[np.bool_]] = []
    for position, column in enumerate(columns):
        if int(column.min()) < 0:
            raise ValueError("format_rows writes non-negative integers only")
        width = len(str(int(column.max())))
        digits = np.empty((n, width), dtype=np.uint8)
        rest = column.copy()
        for place in range(width - 1, -1, -1):
            rest, digit = np.divmod(rest, 10)
            digits[:, place] = digit
        digits += _ZERO
        n_digits = 1 + np.searchsorted(_POWERS_OF_TEN, column, side="right")  # 0 is written "0": one digit
        significant = np.arange(width) >= (width - n_digits)[:, None]
        end = np.full((n, 1), ord(sep) if position < len(columns) - 1 else _NEWLINE, dtype=np.uint8)
        blocks += [digits, end]
        keep += [significant, np.ones((n, 1), dtype=bool)]
    text = np.concatenate(blocks, axis=1)
    return text[np.concatenate(keep, axis=1)].tobytes()


def parse_rows(text: bytes, n_columns: int, sep: str) -> list[npt.NDArray[np.int64]] | None:
    """The columns of ``text``, rows of ``n_columns`` canonical integers each ending in ``\\n``; else ``None``.

    ``None`` means "not a strict integer table", not "malformed": string ids, blank lines, a ``\\r``
    or a float are all refused here, for the exact parser to read or to report by line.
    """
    data = np.frombuffer(text, dtype=np.uint8)
    if data.size == 0 or data[-1] != _NEWLINE:
        return None
    is_digit = (data >= _ZERO) & (data <= ord("9"))
    delimiters = np.flatnonzero(~is_digit)
    if delimiters.size % n_columns:
        return None
    expected = np.full(n_columns, ord(sep), dtype=np.uint8)
    expected[-1] = _NEWLINE
    if not (data[delimiters].reshape(-1, n_columns) == expected).all():
        return None  # a character other than a digit or a delimiter, or the wrong number of fields
    starts = np.empty_like(delimiters)
    starts[0] = 0
    starts[1:] = delimiters[:-1] + 1
    lengths = delimiters - starts
    if lengths.min() < 1 or lengths.max() > MAX_DIGITS or ((data[starts] == _ZERO) & (lengths > 1)).any():
        return None  # an empty field, an overlong number, or a leading zero ("007" is not the id "7")
    values = np.zeros(delimiters.shape[0], dtype=np.int64)
    width = int(lengths.max())
    for place in range(width):  # the fields' digits, right-aligned: place 0 is the largest power
        position = delimiters - width + place
        inside = position >= starts
        digit = data[np.where(inside, position, 0)].astype(np.int64) - _ZERO
        values = values * 10 + np.where(inside, digit, 0)
    table = values.reshape(-1, n_columns)
    return [np.ascontiguousarray(table[:, column]) for column in range(n_columns)]


def read_table(
    path: Path, *, n_columns: int, sep: str, skip: int = 0, threads: int | None = None
) -> list[npt.NDArray[np.int64]] | None:
    """The integer columns of the file at ``path`` from byte ``skip`` on, or ``None`` as ``parse_rows`` says.

    The file is cut into blocks at line ends; the threads count each block's rows, then read it again
    (from the page cache) and parse it into its place in the columns, so memory holds the columns and
    one block's work per thread, never the whole text nor a second copy of the columns.
    """
    size = path.stat().st_size
    with path.open("rb") as file, ThreadPoolExecutor(threads or usable_cores()) as pool:
        bounds = _line_block_bounds(file.fileno(), skip, size)

        def read(block: int) -> bytes:
            start, end = bounds[block], bounds[block + 1]
            text = os.pread(file.fileno(), end - start, start)
            return text if text.endswith(b"\n") else text + b"\n"  # a last line without its line end

        blocks = range(len(bounds) - 1)
        rows = list(pool.map(lambda block: read(block).count(b"\n"), blocks))
        first_row = np.r_[0, np.cumsum(rows)]
        if first_row[-1] == 0:
            return None
        columns = [np.empty(int(first_row[-1]), dtype=np.int64) for _ in range(n_columns)]

        def parse_into(block: int) -> bool:
            parsed = parse_rows(read(block), n_columns, sep)
            if parsed is None:
                return False
            for column, values in zip(columns, parsed, strict=True):
                column[first_row[block] : first_row[block + 1]] = values
            return True

        return columns if all(pool.map(parse_into, blocks)) else None


def _line_block_bounds(fd: int, start: int, size: int) -> list[int]:
    """Offsets ``start = b0 < b1 < ... < size``, each ``bk`` the start of a line, about ``BLOCK_BYTES`` apart."""
    bounds = [start]
    while bounds[-1] < size:
        probe = bounds[-1] + BLOCK_BYTES
        while probe < size:
            tail = os.pread(fd, 1 << 16, probe)
            newline = tail.find(b"\n")
            if newline >= 0:
                probe += newline + 1
                break
            probe += len(tail)
        bounds.append(min(probe, size))
    return bounds
