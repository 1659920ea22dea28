"""Loading, numbering and splitting interaction data: every format, every error, and the synthetic set."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.data import Dataset, DatasetError, SyntheticConfig, load_dataset, make_synthetic, split
from trainer.data.split import holdout, holdout_counts
from trainer.data.synthetic import latent_structure

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)


def dense(matrix: sp.csr_matrix) -> list[list[int]]:
    assert isinstance(matrix, sp.csr_matrix)
    rows: list[list[int]] = matrix.toarray().astype(int).tolist()
    return rows


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- formats


def test_lightgcn_split_is_read_as_published(tmp_path: Path) -> None:
    write(tmp_path / "toy" / "train.txt", "0 0 1\n1 2 2\n\n2\n")  # user 2 has no items; 1-2 repeated
    write(tmp_path / "toy" / "test.txt", "0 2\n1 0 3\n")  # item 3 only in test
    ds = load_dataset(str(tmp_path / "toy"), val_fraction=0.0)

    assert ds.name == "toy"
    assert ds.user_ids == ["0", "1", "2"]
    assert ds.item_ids == ["0", "1", "2", "3"]
    assert dense(ds.train) == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert dense(ds.test) == [[0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
    assert ds.valid.nnz == 0


def test_lightgcn_ids_that_are_not_contiguous_are_renumbered_in_numeric_order(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "10 7 100\n9 7\n")
    write(tmp_path / "test.txt", "10 9\n")
    ds = load_dataset(str(tmp_path), val_fraction=0.0)
    assert ds.user_ids == ["9", "10"]
    assert ds.item_ids == ["7", "9", "100"]
    assert dense(ds.train) == [[1, 0, 0], [1, 0, 1]]
    assert dense(ds.test) == [[0, 0, 0], [0, 1, 0]]


def test_inter_file_uses_named_columns_and_holds_out_the_latest(tmp_path: Path) -> None:
    rows = [f"i{k}\t5\tu1\t{100 + k}" for k in range(5)] + ["i0\t3\tu0\t1", "i1\t3\tu0\t2", "i0\t1\tu1\t999"]
    path = write(tmp_path / "toy.inter", "item_id:token\trating:float\tuser_id:token\ttimestamp:float\n")
    path.write_text(path.read_text() + "\n".join(rows) + "\n")
    ds = load_dataset(str(path), val_fraction=0.0)

    assert ds.name == "toy"
    assert ds.user_ids == ["u0", "u1"]
    assert ds.item_ids == ["i0", "i1", "i2", "i3", "i4"]
    # u1 has 5 distinct items (i0 repeated at t=999 is de-duplicated, keeping t=100): 1 goes to test.
    assert dense(ds.test) == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert dense(ds.train) == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]


def test_directory_with_one_inter_file_is_recognised(tmp_path: Path) -> None:
    write(tmp_path / "ml" / "ml.inter", "user_id:token\titem_id:token\n1\t1\n1\t2\n2\t1\n")
    write(tmp_path / "ml" / "ml.item", "item_id:token\n1\n2\n")
    ds = load_dataset(str(tmp_path / "ml"), val_fraction=0.0)
    assert (ds.name, ds.n_users, ds.n_items, ds.seen().nnz + ds.test.nnz) == ("ml", 2, 2, 3)


@pytest.mark.parametrize(
    "header", ["user,item,timestamp\n", "user_id,item_id,timestamp\n", "userId,movieId,timestamp\n", ""]
)
def test_csv_with_or_without_header(tmp_path: Path, header: str) -> None:
    body = "bob,x,1\nalice,y,2\n\nbob,y,3\nbob,z,4\nbob,w,5\nbob,v,6\n"
    ds = load_dataset(str(write(tmp_path / "events.csv", header + body)), val_fraction=0.0)
    assert ds.name == "events"
    assert ds.user_ids == ["alice", "bob"]
    assert ds.item_ids == ["v", "w", "x", "y", "z"]
    assert dense(ds.test) == [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]  # bob's latest of 5
    assert dense(ds.train) == [[0, 0, 0, 1, 0], [0, 1, 1, 1, 1]]


@pytest.mark.parametrize("ids", ["{}", "x{}"])  # the integer fast path and the string path
def test_repeated_pairs_count_once(tmp_path: Path, ids: str) -> None:
    rows = [f"{ids.format(7)},{ids.format(item)}\n" for item in [1, 2, 3, 4, 5] * 3]
    ds = load_dataset(str(write(tmp_path / "r.csv", "".join(rows))), val_fraction=0.0)
    assert (ds.train.nnz, ds.test.nnz) == (4, 1)  # 5 distinct items: one to test (3 of 15 if repeats counted)


def test_csv_numeric_ids_sort_numerically(tmp_path: Path) -> None:
    ds = load_dataset(str(write(tmp_path / "n.csv", "10,2\n9,2\n2,10\n")), val_fraction=0.0)
    assert ds.user_ids == ["2", "9", "10"]
    assert ds.item_ids == ["2", "10"]


MALFORMED = [
    pytest.param("train.txt", "0 1 2\n1 3 x4\n", 2, "'x4'", id="lightgcn-non-integer"),
    pytest.param("train.txt", "0 1\n\n\n2 -3\n", 4, "'-3'", id="lightgcn-negative"),
    pytest.param("train.txt", "", 1, "''", id="lightgcn-empty"),
    pytest.param("train.txt", "0 1 " + "7" * 80 + "\n", 1, "...", id="lightgcn-truncated"),
    pytest.param("data.csv", "u1,i1\nu2\n", 2, "'u2'", id="csv-missing-column"),
    pytest.param("data.csv", "user,item,timestamp\nu1,i1,5\nu1,i2,soon\n", 3, "'soon'", id="csv-timestamp"),
    pytest.param("data.csv", "u1,,3\n", 1, "'u1,,3'", id="csv-empty-id"),
    pytest.param("data.csv", "\n\n", 1, "''", id="csv-empty"),
    pytest.param("data.inter", "item_id:token\trating:float\n1\t2\n", 1, "'item_id:token", id="inter-no-user"),
    pytest.param("data.inter", "user_id:token\titem_id:token\n1\t2\n1\n", 3, "'1'", id="inter-short-row"),
    pytest.param("data.inter", "", 1, "''", id="inter-empty"),
    pytest.param("data.csv", "1,2\n3,4\n5\n6,7\n", 3, "'5'", id="csv-numeric-missing-column"),
    pytest.param("data.csv", "user,item\n1,2\n3,4,5\n", 3, "'3,4,5'", id="csv-numeric-extra-column"),
    pytest.param("data.csv", "1,2,3\n4,5,x\n", 2, "'x'", id="csv-numeric-timestamp"),
    pytest.param("data.inter", "user_id:token\titem_id:token\n1\t2\n3\n", 3, "'3'", id="inter-numeric-short-row"),
    pytest.param("data.csv", 'a,b\nc,"' + "x" * 200_000 + '"\n', 2, "larger than field limit", id="csv-huge-field"),
    pytest.param("data.csv", 'a,b\n"c\nd",e\n', 3, "without line breaks", id="csv-quoted-line-break"),
]


@pytest.mark.parametrize(("name", "text", "line", "shown"), MALFORMED)
def test_malformed_file_names_file_and_line(tmp_path: Path, name: str, text: str, line: int, shown: str) -> None:
    path = write(tmp_path / "bad" / name, text)
    if name == "train.txt":
        write(tmp_path / "bad" / "test.txt", "0 1\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(tmp_path / "bad"))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: expected ")
    assert shown in message
    assert "\n" not in message and len(message) < len(str(path)) + 160


def exact_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loader read every file line by line, as it did before the integer fast path."""
    monkeypatch.setattr("trainer.data.formats.read_table", lambda *args, **kwargs: None)


def same_dataset(a: Dataset, b: Dataset) -> bool:
    matrices = [(a.train, b.train), (a.valid, b.valid), (a.test, b.test)]
    return (a.user_ids, a.item_ids) == (b.user_ids, b.item_ids) and all(
        x.shape == y.shape and x.indices.dtype == y.indices.dtype and (x != y).nnz == 0 for x, y in matrices
    )


@pytest.mark.parametrize(
    ("name", "header", "row"),
    [
        ("log.csv", "", "{u},{i}"),
        ("log.csv", "userId,movieId,timestamp\n", "{u},{i},{t}"),
        ("log.inter", "item_id:token\trating:float\tuser_id:token\ttimestamp:float\n", "{i}\t5\t{u}\t{t}"),
    ],
)
def test_integer_files_load_as_the_exact_parser_loads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, header: str, row: str
) -> None:
    rng = np.random.default_rng(9)  # shuffled rows, repeated pairs, sparse ids, repeated timestamps
    users, items = rng.integers(0, 400, size=6000) * 7 + 3, rng.integers(0, 300, size=6000) * 11
    stamps = rng.integers(0, 50, size=6000)
    lines = [row.format(u=u, i=i, t=t) for u, i, t in zip(users, items, stamps, strict=True)]
    path = write(tmp_path / name, header + "\n".join(lines) + "\n")
    fast = load_dataset(str(path))
    exact_only(monkeypatch)
    assert same_dataset(fast, load_dataset(str(path)))
    assert fast.user_ids[0] == "3" and fast.test.nnz > 0


def test_missing_test_file_is_named(tmp_path: Path) -> None:
    write(tmp_path / "half" / "train.txt", "0 1\n")
    with pytest.raises(DatasetError, match=r"half/test\.txt: file not found"):
        load_dataset(str(tmp_path / "half"))


def test_directory_without_a_known_format_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "two" / "a.inter", "user_id:token\titem_id:token\n1\t1\n")
    write(tmp_path / "two" / "b.inter", "user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(DatasetError, match=r"exactly one \*\.inter .*found a\.inter, b\.inter"):
        load_dataset(str(tmp_path / "two"))


# ----------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_roughly_the_requested_size() -> None:
    config = SyntheticConfig(n_users=3000, n_items=2000, mean_items_per_user=20, seed=7)
    first, again = make_synthetic(config), make_synthetic(config)
    np.testing.assert_array_equal(first.users, again.users)
    np.testing.assert_array_equal(first.items, again.items)
    other = make_synthetic(SyntheticConfig(n_users=3000, n_items=2000, mean_items_per_user=20, seed=8))
    assert not np.array_equal(first.items[:1000], other.items[:1000])

    per_user = np.bincount(first.users, minlength=config.n_users)
    assert per_user.min() >= 3
    assert abs(per_user.mean() - 20) < 2
    keys = first.users * config.n_items + first.items
    assert (np.diff(keys) > 0).all()  # sorted by (user, item), no duplicates
    assert 0 <= first.items.min() and first.items.max() < config.n_items


def test_synthetic_popularity_is_long_tailed() -> None:
    raw = make_synthetic(SyntheticConfig(n_users=3000, n_items=2000, seed=1))
    counts = np.sort(np.bincount(raw.items, minlength=2000))[::-1]
    assert counts[:200].sum() / counts.sum() > 0.4  # top 10 % of items
    assert counts[1000:].sum() / counts.sum() < 0.25  # bottom half (half of them under uniform)


@pytest.mark.parametrize(("affinity", "low", "high"), [(0.8, 0.6, 0.9), (0.0, 0.05, 0.15)])
def test_synthetic_users_stay_in_their_community(affinity: float, low: float, high: float) -> None:
    config = SyntheticConfig(n_users=2000, n_items=2000, n_communities=10, community_affinity=affinity, seed=3)
    raw = make_synthetic(config)
    latent = latent_structure(config)
    # 80 % of draws are in-community; repeats are likelier there, so fewer distinct items are (~70 %).
    same = latent.item_community[raw.items] == latent.user_community[raw.users]
    assert low < same.mean() < high


def test_synthetic_dataset_has_configured_shape_and_ids() -> None:
    ds = load_dataset("synthetic", synthetic=SyntheticConfig(n_users=300, n_items=400, seed=2))
    assert (ds.name, ds.n_users, ds.n_items) == ("synthetic", 300, 400)
    assert ds.user_ids[:2] == ["u0", "u1"] and ds.item_ids[-1] == "i399"
    assert ds.train.multiply(ds.test).nnz == 0 and ds.valid.multiply(ds.test).nnz == 0
    total = ds.seen().nnz + ds.test.nnz
    assert abs(ds.test.nnz / total - 0.2) < 0.03


def test_tiny_catalogue_still_gives_three_items_per_user() -> None:
    config = SyntheticConfig(n_users=50, n_items=4, n_communities=8, community_affinity=1.0)
    assert np.bincount(make_synthetic(config).users).min() >= 3


# ------------------------------------------------------------------------------------------ split


def random_pairs(seed: int, n_users: int = 300, n_items: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(n_users * n_items, size=8000))
    return keys // n_items, keys % n_items


def test_holdout_counts_round_half_up_and_keep_one() -> None:
    sizes = np.array([1, 2, 3, 4, 5, 10, 14, 15, 100])
    assert holdout_counts(sizes, 0.1).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 10]
    assert holdout_counts(sizes, 0.2).tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 20]
    assert holdout_counts(np.array([2, 3]), 0.9).tolist() == [1, 2]


def test_holdout_is_per_user_reproducible_and_order_free() -> None:
    users, items = random_pairs(0)
    held = holdout(users, items, fraction=0.1, seed=2024)

    sizes = np.bincount(users)
    assert np.bincount(users[held], minlength=sizes.size).tolist() == holdout_counts(sizes, 0.1).tolist()
    assert (np.bincount(users[~held], minlength=sizes.size) >= (sizes > 0)).all()  # nobody loses all
    np.testing.assert_array_equal(held, holdout(users, items, fraction=0.1, seed=2024))
    assert not np.array_equal(held, holdout(users, items, fraction=0.1, seed=1))

    shuffle = np.random.default_rng(5).permutation(users.size)
    np.testing.assert_array_equal(held[shuffle], holdout(users[shuffle], items[shuffle], fraction=0.1, seed=2024))


def reference_holdout(
    users: np.ndarray, items: np.ndarray, fraction: float, seed: int, stamps: np.ndarray | None
) -> np.ndarray:
    """The split as first written: whole-array lexsorts, the definition the blockwise one must match."""
    n = users.shape[0]
    canonical = np.lexsort((items, users))
    tiebreak = np.empty(n)
    tiebreak[canonical] = np.random.default_rng(seed).random(n)
    keys = (tiebreak, users) if stamps is None else (tiebreak, -stamps, users)
    order = np.lexsort(keys)
    sorted_users = users[order]
    group_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[group_start, n])
    rank = np.arange(n) - np.repeat(group_start, sizes)
    held = np.zeros(n, dtype=bool)
    held[order] = rank < np.repeat(holdout_counts(sizes, fraction), sizes)
    return held


@pytest.mark.parametrize("with_stamps", [False, True])
def test_holdout_in_blocks_matches_the_whole_array_split(monkeypatch: pytest.MonkeyPatch, with_stamps: bool) -> None:
    monkeypatch.setattr(split, "_BLOCK_INTERACTIONS", 64)  # many blocks, and users longer than one
    rng = np.random.default_rng(4)
    users = np.sort(np.r_[np.zeros(300, dtype=np.int64), rng.integers(0, 5000, size=20_000)])
    keys = np.unique(users * 10_000 + rng.integers(0, 10_000, size=users.size))
    users, items = keys // 10_000, keys % 10_000  # sorted, distinct: the blockwise path
    stamps = rng.integers(0, 3, size=users.size).astype(np.float64) if with_stamps else None
    for fraction, seed in [(0.2, 0), (0.1, 2024)]:
        held = holdout(users, items, fraction=fraction, seed=seed, timestamps=stamps)
        np.testing.assert_array_equal(held, reference_holdout(users, items, fraction, seed, stamps))
    shuffle = rng.permutation(users.size)  # the general path gives the same split of the same pairs
    held = holdout(
        users[shuffle], items[shuffle], fraction=0.2, seed=0, timestamps=None if stamps is None else stamps[shuffle]
    )
    np.testing.assert_array_equal(held, reference_holdout(users, items, 0.2, 0, stamps)[shuffle])


def test_holdout_with_timestamps_takes_each_users_latest() -> None:
    users, items = random_pairs(1)
    stamps = np.random.default_rng(2).random(users.size)
    held = holdout(users, items, fraction=0.2, seed=0, timestamps=stamps)
    for user in np.unique(users[held]):
        mine = users == user
        assert stamps[mine & held].min() > stamps[mine & ~held].max()


def test_validation_is_carved_from_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lines = [f"{u} " + " ".join(map(str, rng.choice(60, size=rng.integers(1, 30), replace=False))) for u in range(80)]
    write(tmp_path / "train.txt", "\n".join(lines) + "\n")
    write(tmp_path / "test.txt", "0 1\n")
    original = load_dataset(str(tmp_path), val_fraction=0.0).train
    ds = load_dataset(str(tmp_path))

    assert ds.train.multiply(ds.valid).nnz == 0
    assert (ds.seen() != original).nnz == 0
    assert (np.diff(ds.train.indptr) > 0).all()  # every user with train items keeps some
    assert 0.05 < ds.valid.nnz / original.nnz < 0.12
    again = load_dataset(str(tmp_path))
    assert (again.valid != ds.valid).nnz == 0
    assert (load_dataset(str(tmp_path), seed=1).valid != ds.valid).nnz > 0


# ---------------------------------------------------------------------------------------- resolve


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving ``<tmp_path>/served``; yields (folder, base url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def toy_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # one top-level folder, as real archives have
        archive.writestr("toy/train.txt", "0 0 1 2\n1 1 2\n")
        archive.writestr("toy/test.txt", "0 3\n1 0\n")
    return buffer.getvalue()


def test_download_checks_sha256_then_extracts(tmp_path: Path, file_server: tuple[Path, str]) -> None:
    served, base = file_server
    payload = toy_zip()
    (served / "toy.zip").write_bytes(payload)
    data_dir = tmp_path / "data"
    digest = hashlib.sha256(payload).hexdigest()

    ds = load_dataset("toy", data_dir=data_dir, url=f"{base}/toy.zip", sha256=digest, val_fraction=0.0)
    assert (ds.name, ds.n_users, ds.n_items, ds.train.nnz, ds.test.nnz) == ("toy", 2, 4, 5, 2)
    assert sorted(p.name for p in data_dir.iterdir()) == ["toy"]
    assert sorted(p.name for p in (data_dir / "toy").iterdir()) == ["test.txt", "train.txt"]

    (served / "toy.zip").unlink()  # present locally now: no second download
    assert load_dataset("toy", data_dir=data_dir, url=f"{base}/toy.zip", sha256=digest).n_items == 4


def test_download_with_wrong_sha256_leaves_nothing(tmp_path: Path, file_server: tuple[Path, str]) -> None:
    served, base = file_server
    payload = toy_zip()
    (served / "toy.zip").write_bytes(payload)
    data_dir = tmp_path / "data"
    url = f"{base}/toy.zip"

    with pytest.raises(DatasetError) as caught:
        load_dataset("toy", data_dir=data_dir, url=url, sha256="0" * 64)
    message = str(caught.value)
    assert url in message and "0" * 64 in message and hashlib.sha256(payload).hexdigest() in message
    assert list(data_dir.iterdir()) == []


def test_download_of_tar_gz_and_of_a_single_file(tmp_path: Path, file_server: tuple[Path, str]) -> None:
    served, base = file_server
    inter = b"user_id:token\titem_id:token\n1\t1\n1\t2\n2\t2\n"
    with tarfile.open(served / "flat.tgz", "w:gz") as archive:
        info = tarfile.TarInfo("flat.inter")
        info.size = len(inter)
        archive.addfile(info, io.BytesIO(inter))
    (served / "single.inter").write_bytes(inter)

    for name, file in [("flat", "flat.tgz"), ("single", "single.inter")]:
        digest = hashlib.sha256((served / file).read_bytes()).hexdigest()
        ds = load_dataset(name, data_dir=tmp_path / "data", url=f"{base}/{file}", sha256=digest)
        assert (ds.name, ds.n_users, ds.n_items) == (name, 2, 2)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["flat", "single"]


def test_url_without_checksum_and_unreachable_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="sha256"):
        load_dataset("toy", data_dir=tmp_path, url="http://127.0.0.1:9/toy.zip")
    with pytest.raises(DatasetError, match=r"http://127\.0\.0\.1:9/toy\.zip: download"):
        load_dataset("toy", data_dir=tmp_path, url="http://127.0.0.1:9/toy.zip", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_name_is_looked_up_in_the_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "toy" / "train.txt", "0 0\n")
    write(tmp_path / "toy" / "test.txt", "0 1\n")
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    assert load_dataset("toy").n_items == 2
    with pytest.raises(DatasetError, match=r"'absent' not found.*absent.*RECSYS_DATA_DIR.*url="):
        load_dataset("absent")


def test_gowalla_from_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED_DATA / "gowalla").is_dir():
        pytest.skip(f"no shared benchmark data at {SHARED_DATA}")
    monkeypatch.setenv("RECSYS_DATA_DIR", str(SHARED_DATA))
    ds: Dataset = load_dataset("gowalla")
    assert (ds.n_users, ds.n_items) == (29_858, 40_981)
    assert (ds.train.nnz + ds.valid.nnz, ds.test.nnz) == (810_128, 217_242)
    assert ds.user_ids[123] == "123" and ds.item_ids[40_980] == "40980"
    assert ds.train.multiply(ds.valid).nnz == 0
    assert (np.diff(ds.train.indptr) > 0).all()
