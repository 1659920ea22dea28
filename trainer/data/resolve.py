"""Turn a dataset spec (``"synthetic"``, a path, or a name) into a split, id-numbered ``Dataset``.

This is the one place that knows where data lives and how it becomes matrices, so the trainer
and the scripts take a single string and a user can point at their own files, a shared data
directory, or a URL with a checksum, and always get the same numbering and the same splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from tqdm import tqdm

from trainer.data.dataset import Dataset, DatasetError
from trainer.data.formats import RawInteractions, read_csv, read_inter, read_lightgcn
from trainer.data.split import holdout, is_sorted_pairs
from trainer.data.synthetic import SyntheticConfig, make_synthetic

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RECSYS_DATA_DIR"
TEST_FRACTION = 0.2
# The test split of files without one (and of synthetic data) is fixed, so changing the validation
# seed or fraction never changes what a model is finally scored on.
TEST_SPLIT_SEED = 0
_DOWNLOAD_CHUNK = 1 << 20
_BLOCK = 1 << 22  # elements per step of the loops that spare a full-size temporary

Ids = npt.NDArray[np.int64]


def load_dataset(
    spec: str,
    *,
    data_dir: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 2024,
    synthetic: SyntheticConfig | None = None,
) -> Dataset:
    """Load, number and split the data set named by ``spec``.

    * ``"synthetic"``: ``make_synthetic(synthetic or SyntheticConfig())``.
    * an existing path: a directory with ``train.txt``/``test.txt`` (LightGCN split), a ``.inter``
      or ``.csv`` file, or a directory holding exactly one of those.
    * otherwise a name, looked up as ``<data_dir>/<spec>``; ``data_dir`` defaults to
      ``$RECSYS_DATA_DIR``, else ``./data``. If it is missing and ``url`` is given, the file is
      downloaded, checked against ``sha256`` and unpacked there first.

    Files without a test split lose ``TEST_FRACTION`` of each user's interactions to test (the latest
    ones when there are timestamps); then ``val_fraction`` of each user's training items go to
    validation, drawn with ``seed``. See ``trainer.data.split`` for the per-user counts.

    Example::

        ds = load_dataset("gowalla", data_dir=Path("../shared/data"))
        ds.summary()  # 'gowalla: 29858 users, 40981 items, train ..., valid ..., test 217242'
    """
    started = time.perf_counter()
    if not spec.strip():
        raise DatasetError("empty dataset spec: expected 'synthetic', a path, or a dataset name")
    if spec == "synthetic":
        dataset = _synthetic(synthetic or SyntheticConfig(), val_fraction=val_fraction, seed=seed)
    elif Path(spec).exists():
        dataset = _load_path(Path(spec), val_fraction=val_fraction, seed=seed)
    else:
        root = data_dir if data_dir is not None else default_data_dir()
        target = root / spec
        if not target.exists():
            if url is None:
                source = "the data_dir argument" if data_dir is not None else _data_dir_source()
                raise DatasetError(
                    f"dataset {spec!r} not found: no such path, and no {target} "
                    f"(data dir from {source}); "
                    f"put the files there, set {DATA_DIR_ENV}, pass a path, or give url= and sha256="
                )
            download(url, target, sha256=sha256)
        dataset = _load_path(target, val_fraction=val_fraction, seed=seed)
    log.info("loaded %s in %.2fs", dataset.summary(), time.perf_counter() - started)
    return dataset


def default_data_dir() -> Path:
    """``$RECSYS_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def _data_dir_source() -> str:
    return f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else f"default ./data, ${DATA_DIR_ENV} unset"


# ------------------------------------------------------------------------------------------ formats


def _load_path(path: Path, *, val_fraction: float, seed: int) -> Dataset:
    if path.is_file():
        return _load_file(path, path.stem, val_fraction=val_fraction, seed=seed)
    if not path.is_dir():
        raise DatasetError(f"{path}: neither a file nor a directory")
    if (path / "train.txt").exists() or (path / "test.txt").exists():
        split = read_lightgcn(path)
        return _from_lightgcn(path.name, split.train, split.test, split.users, val_fraction, seed)
    candidates = sorted(path.glob("*.inter")) or sorted(path.glob("*.csv"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise DatasetError(
            f"{path}: expected train.txt + test.txt, or exactly one *.inter or *.csv file, found {found}"
        )
    return _load_file(candidates[0], path.name, val_fraction=val_fraction, seed=seed)


def _load_file(path: Path, name: str, *, val_fraction: float, seed: int) -> Dataset:
    if path.suffix == ".inter":
        raw = read_inter(path)
    elif path.suffix == ".csv":
        raw = read_csv(path)
    else:
        raise DatasetError(f"{path}: expected a .inter or .csv file, got suffix {path.suffix!r}")
    keys, timestamps, user_ids, item_ids = _numbered(raw)
    del raw  # the file's id columns: the keys now say everything they did
    return _from_keys(name, keys, timestamps, user_ids, item_ids, val_fraction, seed)


def _numbered(raw: RawInteractions) -> tuple[Ids, npt.NDArray[np.float64] | None, list[str], list[str]]:
    """Each pair as one key ``user * n_items + item`` of internal ids, with the external ids.

    Integer ids are looked up block by block, so no column of internal ids is made beside the keys.
    """
    user_lookup, user_ids = _integer_ids(raw.users)
    item_lookup, item_ids = _integer_ids(raw.items)
    if user_lookup is None or item_lookup is None:
        (user_codes,), user_ids = _encode(raw.users)
        (item_codes,), item_ids = _encode(raw.items)
        return user_codes * len(item_ids) + item_codes, raw.timestamps, user_ids, item_ids
    keys = np.empty(len(raw), dtype=np.int64)
    for start in range(0, len(raw), _BLOCK):
        block = slice(start, start + _BLOCK)
        np.multiply(user_lookup(raw.users[block]), len(item_ids), out=keys[block])
        keys[block] += item_lookup(raw.items[block])
    return keys, raw.timestamps, user_ids, item_ids


def _synthetic(config: SyntheticConfig, *, val_fraction: float, seed: int) -> Dataset:
    raw = make_synthetic(config)
    user_ids = [f"u{k}" for k in range(config.n_users)]
    item_ids = [f"i{k}" for k in range(config.n_items)]  # items never drawn keep their column
    return _from_pairs("synthetic", raw.users, raw.items, None, user_ids, item_ids, val_fraction, seed)


def _from_lightgcn(
    name: str,
    train: RawInteractions,
    test: RawInteractions,
    listed_users: Ids,
    val_fraction: float,
    seed: int,
) -> Dataset:
    (train_users, test_users, _), user_ids = _encode(train.users, test.users, listed_users)
    (train_items, test_items), item_ids = _encode(train.items, test.items)
    shape = (len(user_ids), len(item_ids))
    train_users, train_items, _ = _dedupe(train_users, train_items, None, shape[1])
    test = _matrix(test_users, test_items, shape)
    return _with_validation(name, user_ids, item_ids, train_users, train_items, test, val_fraction, seed)


def _from_pairs(
    name: str,
    users: Ids,
    items: Ids,
    timestamps: npt.NDArray[np.float64] | None,
    user_ids: list[str],
    item_ids: list[str],
    val_fraction: float,
    seed: int,
) -> Dataset:
    keys = users * len(item_ids) + items
    return _from_keys(name, keys, timestamps, user_ids, item_ids, val_fraction, seed)


def _from_keys(
    name: str,
    keys: Ids,
    timestamps: npt.NDArray[np.float64] | None,
    user_ids: list[str],
    item_ids: list[str],
    val_fraction: float,
    seed: int,
) -> Dataset:
    """Split pairs given as keys ``user * n_items + item``, which are consumed: sorted and overwritten in place."""
    shape = (len(user_ids), len(item_ids))
    users, items, timestamps = _dedupe_keys(keys, timestamps, shape[1])
    in_test = holdout(users, items, fraction=TEST_FRACTION, seed=TEST_SPLIT_SEED, timestamps=timestamps)
    test = _matrix(users, items, shape, where=in_test)
    np.logical_not(in_test, out=in_test)
    users, items = _keep(users, in_test), _keep(items, in_test)  # the training pairs, in place
    return _with_validation(name, user_ids, item_ids, users, items, test, val_fraction, seed)


def _with_validation(
    name: str,
    user_ids: list[str],
    item_ids: list[str],
    users: Ids,
    items: Ids,
    test: sp.csr_matrix,
    val_fraction: float,
    seed: int,
) -> Dataset:
    """Carve validation out of de-duplicated training pairs and build the matrices."""
    shape = (len(user_ids), len(item_ids))
    in_valid = holdout(users, items, fraction=val_fraction, seed=seed)
    return Dataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=_matrix(users, items, shape, where=~in_valid),
        valid=_matrix(users, items, shape, where=in_valid),
        test=test,
    )


# ------------------------------------------------------------------------------------ ids, matrices


def _encode(*columns: npt.NDArray[Any]) -> tuple[list[Ids], list[str]]:
    """Number the external ids of all ``columns`` jointly, in sorted order of the ids.

    Ids that are all integers (LightGCN files, or ``.inter``/CSV files with numeric ids) sort
    numerically, so ids contiguous from 0 keep their value as internal id; anything else sorts as
    strings. Returns the internal ids of each column and the external id of each internal id.
    """
    if all(column.dtype.kind in "iu" for column in columns):
        return _encode_integers(columns)
    joined = np.concatenate(columns)
    unique, inverse = np.unique(joined, return_inverse=True)
    order = _numeric_order(unique)
    if order is None:
        codes = inverse.astype(np.int64)
        names = [str(v) for v in unique.tolist()]
    else:
        rank = np.empty(order.shape[0], dtype=np.int64)
        rank[order] = np.arange(order.shape[0], dtype=np.int64)
        codes = rank[inverse]
        names = [str(v) for v in unique[order].tolist()]
    bounds = np.cumsum([c.shape[0] for c in columns])[:-1]
    return list(np.split(codes.reshape(-1), bounds)), names


def _encode_integers(columns: tuple[npt.NDArray[Any], ...]) -> tuple[list[Ids], list[str]]:
    """``_encode`` for integer ids: ids already ``0..n-1`` come back as they are, without a copy."""
    lookup, names = _integer_ids(*columns)
    if lookup is None:
        joined = np.concatenate(columns).astype(np.int64)
        unique, inverse = np.unique(joined, return_inverse=True)
        bounds = np.cumsum([c.shape[0] for c in columns])[:-1]
        return list(np.split(inverse.reshape(-1).astype(np.int64), bounds)), list(map(str, unique.tolist()))
    return [lookup(column) for column in columns], names


def _integer_ids(*columns: npt.NDArray[Any]) -> tuple[Callable[[npt.NDArray[Any]], Ids] | None, list[str]]:
    """How integer ids map to internal ids, and the external ids; ``None`` where a lookup table does not pay.

    A table with one flag per possible id marks those present, and their running count is the
    internal id: no sort, as long as the ids' range is not much larger than the data. Ids that are
    already ``0..n-1`` map to themselves.
    """
    if not all(column.dtype.kind in "iu" for column in columns):
        return None, []
    filled = [column for column in columns if column.size]
    total = sum(column.shape[0] for column in columns)
    low = min((int(column.min()) for column in filled), default=0)
    high = max((int(column.max()) for column in filled), default=-1)
    if low < 0 or high >= max(2 * total, 1 << 20):
        return None, []
    present = np.zeros(high + 1, dtype=bool)
    for column in filled:
        present[column] = True
    unique = np.flatnonzero(present)
    names = _names(unique)
    if unique.shape[0] == high + 1:
        return lambda column: column.astype(np.int64, copy=False), names
    rank = np.cumsum(present, dtype=np.int64) - 1
    return lambda column: rank[column], names


def _names(ids: Ids) -> list[str]:
    """The external ids as text, converted a block at a time: ``tolist()`` of them all would hold every int at once."""
    names: list[str] = []
    for start in range(0, ids.shape[0], _BLOCK):
        names.extend(map(str, ids[start : start + _BLOCK].tolist()))
    return names


def _numeric_order(unique: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
    """The permutation sorting string ids by integer value, if they are distinct integers."""
    try:
        values = unique.astype(np.int64)
    except (ValueError, OverflowError):
        return None
    if np.unique(values).shape[0] != values.shape[0]:  # e.g. "7" and "007"
        return None
    return np.argsort(values, kind="stable").astype(np.int64)


def _dedupe(
    users: Ids, items: Ids, timestamps: npt.NDArray[np.float64] | None, n_items: int
) -> tuple[Ids, Ids, npt.NDArray[np.float64] | None]:
    """Drop repeated pairs, keeping the earliest timestamp: when the user first met the item."""
    return _dedupe_keys(users * n_items + items, timestamps, n_items)


def _dedupe_keys(
    keys: Ids, timestamps: npt.NDArray[np.float64] | None, n_items: int
) -> tuple[Ids, Ids, npt.NDArray[np.float64] | None]:
    """The distinct pairs of ``keys`` (consumed) in ``(user, item)`` order, each with its earliest timestamp.

    Without timestamps the keys are sorted and compacted in place and the items are computed into
    the same buffer, so the pairs cost one array besides the keys.
    """
    if timestamps is not None:
        order = np.lexsort((timestamps, keys))
        sorted_keys = keys[order]
        first = order[np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]] if keys.size else order
        return keys[first] // n_items, keys[first] % n_items, timestamps[first]
    if not _is_sorted(keys):  # files written in (user, item) order, such as recsys-generate's, skip the sort
        keys.sort()
    keys = _keep(keys, np.r_[True, keys[1:] != keys[:-1]])
    users = keys // n_items
    np.remainder(keys, n_items, out=keys)
    return users, keys, None


def _is_sorted(keys: Ids) -> bool:
    for start in range(0, keys.shape[0] - 1, _BLOCK):
        end = min(start + _BLOCK, keys.shape[0] - 1)
        if (keys[start + 1 : end + 1] < keys[start:end]).any():
            return False
    return True


def _keep(array: Ids, mask: npt.NDArray[np.bool_]) -> Ids:
    """``array[mask]`` without a second array: written over ``array``'s front, block by block, and returned as a view.

    Going forward, a block's kept values never land beyond the block, so nothing unread is overwritten.
    """
    kept = 0
    for start in range(0, array.shape[0], _BLOCK):
        chosen = array[start : start + _BLOCK][mask[start : start + _BLOCK]]
        array[kept : kept + chosen.shape[0]] = chosen
        kept += chosen.shape[0]
    return array[:kept]


def _matrix(
    users: Ids, items: Ids, shape: tuple[int, int], *, where: npt.NDArray[np.bool_] | None = None
) -> sp.csr_matrix:
    """The binary matrix of the pairs (those ``where`` marks); sorted, distinct pairs go straight to CSR."""
    if not is_sorted_pairs(users, items):
        if where is not None:
            users, items = users[where], items[where]
        matrix = sp.csr_matrix((np.ones(users.shape[0], dtype=np.float32), (users, items)), shape=shape)
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix
    index = np.int32 if max(users.shape[0], *shape) < 2**31 else np.int64
    columns = (items if where is None else items[where]).astype(index)
    per_user = np.bincount(users if where is None else users[where], minlength=shape[0])
    indptr = np.zeros(shape[0] + 1, dtype=index)
    np.cumsum(per_user, out=indptr[1:])
    return sp.csr_matrix((np.ones(columns.shape[0], dtype=np.float32), columns, indptr), shape=shape)


# ------------------------------------------------------------------------------------------ download


def download(url: str, target: Path, *, sha256: str | None) -> None:
    """Fetch ``url`` into the directory ``target``, checking its SHA-256 before anything is unpacked.

    Archives (``.zip``, ``.tar.gz``, ``.tgz``, detected from their content) are extracted; anything
    else is kept as a single file named after the URL. A lone top-level folder in the archive is
    flattened. The result appears at ``target`` in one ``os.replace``, so an interrupted download
    never leaves a half-filled data set behind.
    """
    if not sha256:
        raise DatasetError(f"{url}: a sha256= checksum is required to download a dataset")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".download")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as progress:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
        expected, actual = sha256.strip().lower(), digest.hexdigest()
        if actual != expected:
            raise DatasetError(f"{url}: checksum mismatch, expected sha256 {expected}, got {actual}")
        log.info("downloaded %s (sha256 ok) to %s", url, target)
        _install(temp, target, Path(urllib.parse.urlparse(url).path).name or target.name)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DatasetError(f"{url}: download into {target} failed: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)


def _install(downloaded: Path, target: Path, filename: str) -> None:
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        if zipfile.is_zipfile(downloaded):
            with zipfile.ZipFile(downloaded) as archive:
                archive.extractall(staging)
        elif tarfile.is_tarfile(downloaded):
            with tarfile.open(downloaded) as archive:
                archive.extractall(staging, filter="data")
        else:
            os.replace(downloaded, staging / filename)
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        try:
            os.replace(root, target)
        except OSError:
            if not target.exists():
                raise
            log.info("%s appeared while downloading (another process?); keeping it", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
