import numpy as np
import pytest

from index.id_map import IdMap, fnv1a, line_hashes

IDS = ["u0", "", "ü-ünïcode", "a" * 300, "u10", "x\x0cy", "u1"]


def test_a_row_is_found_for_every_id_and_none_for_others() -> None:
    ids = IdMap.of(IDS)
    assert [ids.row(i) for i in IDS] == list(range(len(IDS)))
    assert ids.row("u2") is None and ids.row("a" * 299) is None


def test_it_reads_like_the_list_of_ids() -> None:
    ids = IdMap.of(IDS)
    assert len(ids) == len(IDS) and list(ids) == IDS and ids == IDS and ids != IDS[:-1]
    assert ids[-1] == "u1" and ids[1:3] == IDS[1:3] and ids.take(np.array([4, 0])) == ["u10", "u0"]
    assert ids.index("u10") == 4 and "u0" in ids
    rows = np.random.default_rng(0).integers(0, len(IDS), 50)
    assert ids.take(rows) == [IDS[r] for r in rows] and ids.take([]) == []
    with pytest.raises(IndexError):
        ids.take([len(IDS)])
    with pytest.raises(IndexError):
        ids[len(IDS)]


def test_the_hashes_of_all_lines_are_those_of_each() -> None:
    ids = IdMap.of(IDS)
    hashes = line_hashes(ids._data, ids._starts)
    assert hashes.tolist() == [fnv1a(i.encode()) for i in IDS]


def test_colliding_hashes_are_settled_by_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id hashed alike: lookups and the repeat check still compare the ids themselves."""
    monkeypatch.setattr("index.id_map.line_hashes", lambda data, starts: np.zeros(starts.size - 1, np.uint64))
    monkeypatch.setattr("index.id_map.fnv1a", lambda data: 0)
    ids = IdMap.of(IDS)
    assert [ids.row(i) for i in IDS] == list(range(len(IDS))) and ids.row("nobody") is None
    assert ids.distinct() and not IdMap.of(["a", "b", "a"]).distinct()


def test_repeats_are_found() -> None:
    assert IdMap.of(["a", "b", "c"]).distinct() and not IdMap.of(["a", "b", "a"]).distinct()
    assert IdMap.of([]).distinct() and len(IdMap.of([])) == 0


def test_a_file_reads_as_the_lines_it_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in IDS), encoding="utf-8")
    assert IdMap.open(path) == IDS and IdMap.open(path).row("u1") == 6
    path.write_bytes(b"a\nb")  # no newline after the last id: it ends with the file
    assert IdMap.open(path) == ["a", "b"] and IdMap.open(path).take([1, 0]) == ["b", "a"]
    path.write_bytes(b"")
    assert len(IdMap.open(path)) == 0
    path.write_bytes(b"a\n\xff\n")
    with pytest.raises(UnicodeDecodeError):
        IdMap.open(path)
