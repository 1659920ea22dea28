"""Parsers for the interaction files we accept, kept apart from id numbering and splitting.

Each parser returns the pairs exactly as written (external ids, optional timestamps) and turns any
malformed input into one ``DatasetError`` line, ``<path>:<line>: expected <what>, got <text>``, so a
bad download or a hand-edited file is fixed in one look instead of from a NumPy traceback.

CSV and ``.inter`` files whose every field is a plain non-negative integer (generated logs, most
exports) are read by ``trainer.data.int_text`` in parallel blocks, into the ``int64`` ids the exact
parsers' ids would be numbered as; any other file, or one with a fault, is read line by line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from trainer.data.dataset import DatasetError
from trainer.data.int_text import read_table

_EXCERPT_CHARS = 60
_HEADER_BYTES = 1 << 16
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class RawInteractions:
    """User-item pairs with the file's own ids: ``int64`` arrays for LightGCN, ``str`` arrays otherwise.

    ``timestamps`` is ``None`` when the file has none; otherwise it is aligned with ``users``.
    """

    users: npt.NDArray[Any]
    items: npt.NDArray[Any]
    timestamps: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class LightGCNSplit:
    """The published train / test pairs, plus every user listed in ``train.txt`` (even with no items)."""

    train: RawInteractions
    test: RawInteractions
    users: npt.NDArray[np.int64]


def _excerpt(text: str) -> str:
    if len(text) <= _EXCERPT_CHARS:
        return repr(text)
    return repr(text[:_EXCERPT_CHARS]) + "..."


def malformed(path: Path, line: int, expected: str, got: str) -> DatasetError:
    """The one-line error every parser raises: file, 1-based line, what was expected, what was found."""
    return DatasetError(f"{path}:{line}: expected {expected}, got {_excerpt(got)}")


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected {what})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: expected UTF-8 text, got a bad byte at offset {exc.start}") from exc


# --------------------------------------------------------------------------------------------- LightGCN


def _read_lightgcn_file(path: Path) -> tuple[RawInteractions, npt.NDArray[np.int64]]:
    """One ``user item item ...`` file: all tokens are converted in a single NumPy call.

    The per-line loop only splits and counts; the slow line-by-line scan runs only when that single
    conversion fails, to name the offending line.
    """
    lines = _read_text(path, "a LightGCN file with lines 'user item item ...'").splitlines()
    tokens: list[str] = []
    counts: list[int] = []
    for line in lines:
        fields = line.split()
        if fields:
            tokens.extend(fields)
            counts.append(len(fields))
    if not counts:
        raise malformed(path, 1, "lines 'user item item ...'", "" if not lines else lines[0])
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        _raise_first_bad_token(path, lines)
    if (values < 0).any():
        _raise_first_bad_token(path, lines)

    counts_arr = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts_arr) - counts_arr
    line_users = values[starts]
    is_item = np.ones(values.shape[0], dtype=bool)
    is_item[starts] = False
    users = np.repeat(line_users, counts_arr - 1)
    items = values[is_item]
    return RawInteractions(users=users, items=items), line_users


def _raise_first_bad_token(path: Path, lines: list[str]) -> NoReturn:
    for number, line in enumerate(lines, start=1):
        for token in line.split():
            # isdecimal also rejects '-1', '+1' and '1.0': ids are non-negative integers.
            if not token.isdecimal() or int(token) > _INT64_MAX:
                raise malformed(path, number, "a non-negative 64-bit integer id", token)
    raise AssertionError(f"{path}: conversion failed but every token is a valid id")


def read_lightgcn(directory: Path) -> LightGCNSplit:
    """Read the LightGCN benchmark split: ``train.txt`` and ``test.txt`` in ``directory``.

    Example::

        split = read_lightgcn(Path("data/gowalla"))
        len(split.train), len(split.test)   # (810128, 217242)
    """
    train, train_users = _read_lightgcn_file(directory / "train.txt")
    test, _ = _read_lightgcn_file(directory / "test.txt")
    return LightGCNSplit(train=train, test=test, users=train_users)


# --------------------------------------------------------------------------------------------- tabular


def _table_rows(
    path: Path,
    rows: Iterator[tuple[int, list[str]]],
    *,
    sep: str,
    user: int,
    item: int,
    timestamp: int | None,
    width: int,
) -> RawInteractions:
    """Collect the id and timestamp columns of already split rows, checking each one."""
    users: list[str] = []
    items: list[str] = []
    stamps: list[float] = []
    what = f"{width} columns"
    for number, fields in rows:
        if len(fields) != width:
            raise malformed(path, number, what, sep.join(fields))
        user_id, item_id = fields[user].strip(), fields[item].strip()
        if not user_id or not item_id:
            raise malformed(path, number, "non-empty user and item ids", sep.join(fields))
        users.append(user_id)
        items.append(item_id)
        if timestamp is not None:
            try:
                stamps.append(float(fields[timestamp]))
            except ValueError:
                raise malformed(path, number, "a numeric timestamp", fields[timestamp]) from None
    if not users:
        raise malformed(path, 1, "at least one interaction", "")
    return RawInteractions(
        users=np.array(users),
        items=np.array(items),
        timestamps=np.array(stamps, dtype=np.float64) if timestamp is not None else None,
    )


def read_inter(path: Path) -> RawInteractions:
    """Read a RecBole atomic ``.inter`` file: tab-separated, header fields ``name:type``.

    The ``user_id``, ``item_id`` and optional ``timestamp`` columns are found by name; other
    columns (ratings, labels) are ignored, since we train on implicit feedback.
    """
    fast = _read_integer_inter(path)
    if fast is not None:
        return fast
    text = _read_text(path, "a RecBole .inter file")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise malformed(path, 1, "a header like 'user_id:token<TAB>item_id:token'", lines[0] if lines else "")
    header = [field.split(":", 1)[0].strip() for field in lines[0].split("\t")]
    for required in ("user_id", "item_id"):
        if required not in header:
            raise malformed(path, 1, f"a header with a '{required}:token' column", lines[0])
    timestamp = header.index("timestamp") if "timestamp" in header else None
    rows = ((number, line.split("\t")) for number, line in enumerate(lines[1:], start=2) if line.strip())
    return _table_rows(
        path,
        rows,
        sep="\t",
        user=header.index("user_id"),
        item=header.index("item_id"),
        timestamp=timestamp,
        width=len(header),
    )


def read_csv(path: Path) -> RawInteractions:
    """Read ``user,item[,timestamp]`` rows; a first field ``user``, ``user_id`` or ``userId`` marks a header row.

    The column count is fixed by the first row (2 or 3); every other row must match it.
    """
    fast = _read_integer_csv(path)
    if fast is not None:
        return fast
    text = _read_text(path, "a CSV file with rows 'user,item[,timestamp]'")
    reader = csv.reader(io.StringIO(text, newline=""))  # a quoted line break stays in its field, to be refused

    def parsed() -> Iterator[tuple[int, list[str]]]:
        try:  # the csv module's own refusals (a field over its size limit): the line, not a traceback
            for fields in reader:
                if any("\n" in field or "\r" in field for field in fields):  # an id the bundle's id files cannot hold
                    raise malformed(path, reader.line_num, "fields without line breaks", ",".join(fields))
                if any(field.strip() for field in fields):
                    yield reader.line_num, fields
        except csv.Error as error:
            raise malformed(path, reader.line_num, "rows 'user,item[,timestamp]'", f"({error})") from error

    numbered = parsed()
    first = next(numbered, None)
    if first is None:
        raise malformed(path, 1, "rows 'user,item[,timestamp]'", text.splitlines()[0] if text else "")
    number, fields = first
    if len(fields) not in (2, 3):
        raise malformed(path, number, "2 or 3 columns 'user,item[,timestamp]'", ",".join(fields))
    has_header = _names_user_column(fields[0])

    def rows() -> Iterator[tuple[int, list[str]]]:
        if not has_header:
            yield first
        yield from numbered

    timestamp = 2 if len(fields) == 3 else None
    return _table_rows(path, rows(), sep=",", user=0, item=1, timestamp=timestamp, width=len(fields))


def _names_user_column(field: str) -> bool:
    """`user`, `user_id`, `userId`, `user id`…: a CSV whose first field names the user column has a header row."""
    return field.strip().lower().replace("_", "").replace(" ", "") in ("user", "userid")


def _first_line(path: Path) -> str | None:
    """The first line with its ``\n``, if the file has one within its first bytes and it is UTF-8."""
    if not path.is_file():
        return None
    with path.open("rb") as file:
        head = file.read(_HEADER_BYTES)
    end = head.find(b"\n")
    try:
        return head[: end + 1].decode("utf-8") if end >= 0 else None
    except UnicodeDecodeError:
        return None


def _read_integer_csv(path: Path) -> RawInteractions | None:
    """``read_csv``'s result for a CSV of integers only, read in parallel blocks; ``None`` for any other file."""
    first = _first_line(path)
    if first is None:
        return None
    fields = first[:-1].split(",")
    if len(fields) not in (2, 3):
        return None
    skip = len(first.encode()) if _names_user_column(fields[0]) else 0
    columns = read_table(path, n_columns=len(fields), sep=",", skip=skip)
    if columns is None:
        return None
    stamps = columns[2].astype(np.float64) if len(fields) == 3 else None
    return RawInteractions(users=columns[0], items=columns[1], timestamps=stamps)


def _read_integer_inter(path: Path) -> RawInteractions | None:
    """``read_inter``'s result for a ``.inter`` file of integers only, read in parallel blocks; else ``None``."""
    first = _first_line(path)
    if first is None:
        return None
    header = [field.split(":", 1)[0].strip() for field in first[:-1].split("\t")]
    if "user_id" not in header or "item_id" not in header:
        return None
    columns = read_table(path, n_columns=len(header), sep="\t", skip=len(first.encode()))
    if columns is None:
        return None
    stamps = columns[header.index("timestamp")].astype(np.float64) if "timestamp" in header else None
    return RawInteractions(
        users=columns[header.index("user_id")], items=columns[header.index("item_id")], timestamps=stamps
    )
