"""Integer tables as text: what the vectorised writer writes, the strict reader reads back, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data import int_text
from trainer.data.int_text import format_rows, parse_rows, read_table


def test_rows_round_trip_including_zero_and_eighteen_digits() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 10**6, size=5000)
    items = rng.integers(0, 10**18, size=5000)
    users[:3], items[:3] = [0, 9, 10], [0, 10**18 - 1, 100]
    text = format_rows([users, items], ",")
    assert text.startswith(b"0,0\n9,999999999999999999\n10,100\n")
    assert text == "".join(f"{u},{i}\n" for u, i in zip(users.tolist(), items.tolist(), strict=True)).encode()
    parsed = parse_rows(text, 2, ",")
    assert parsed is not None
    np.testing.assert_array_equal(parsed[0], users)
    np.testing.assert_array_equal(parsed[1], items)


def test_three_tab_separated_columns() -> None:
    parsed = parse_rows(b"1\t2\t3\n40\t50\t60\n", 3, "\t")
    assert parsed is not None and [c.tolist() for c in parsed] == [[1, 40], [2, 50], [3, 60]]


@pytest.mark.parametrize(
    "text",
    [
        b"1,2\n3,x\n",  # a string id
        b"1,2\n\n3,4\n",  # a blank line
        b"01,2\n",  # a leading zero: "01" is not the id "1"
        b"-1,2\n",
        b"+1,2\n",
        b" 1,2\n",
        b"1,2\r\n",
        b"1.5,2\n",
        b'"1",2\n',
        b"1,2,3\n",
        b"1\n",
        b",1\n",
        b"1,2",  # no line end
        b"1234567890123456789,2\n",  # 19 digits may overflow int64
        b"",
    ],
)
def test_anything_but_a_strict_integer_table_is_refused(text: bytes) -> None:
    assert parse_rows(text, 2, ",") is None


def test_format_rows_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        format_rows([np.array([1, -2]), np.array([3, 4])], ",")


def test_read_table_joins_many_blocks_and_a_last_line_without_line_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int_text, "BLOCK_BYTES", 64)
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 10**7, size=3000), rng.integers(0, 10**4, size=3000)
    header = b"user_id,item_id\n"
    path = tmp_path / "t.csv"
    path.write_bytes(header + format_rows([users, items], ",")[:-1])
    columns = read_table(path, n_columns=2, sep=",", skip=len(header), threads=3)
    assert columns is not None
    np.testing.assert_array_equal(columns[0], users)
    np.testing.assert_array_equal(columns[1], items)


def test_read_table_refuses_a_file_with_one_bad_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int_text, "BLOCK_BYTES", 64)
    path = tmp_path / "t.csv"
    path.write_bytes(b"".join(b"%d,%d\n" % (k, k) for k in range(500)) + b"7,x\n")
    assert read_table(path, n_columns=2, sep=",") is None
    assert read_table(tmp_path.joinpath("t.csv"), n_columns=3, sep=",") is None
