"""The versioned bundle: the only contract between trainer, index and service (docs/architecture.md §3).

A bundle is a directory that is written under a temporary name and published with one
``os.replace``; a ``CURRENT`` file beside the bundles names the live one. Loading verifies the
format version, every file's sha256 and every shape, and refuses a bad bundle with a message that
names the file and the problem, so a broken export can never replace a model that serves.

Format versions: 3 writes the cold-start section (``index.cold_start``) with the sum of the items' layers, all a new
user's representation needs. 1 and 2 are read too: their sections' layers are summed on load
(``cold_start.summed_layers``), and format 1's missing hash parameters are taken as what they meant then
(``cold_start.FORMAT1_DEFAULTS``). Any other version is refused in one line that names it, before the rest of the
manifest is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from index.codes import CodeLayout, ScaleMode, check_pairing, check_scales, code_dtype, code_width
from index.cold_start import ColdStartSection
from index.id_map import IdMap
from index.npz_map import read_npz
from index.threads import usable_cores

FORMAT_VERSION = 3  # what publish_bundle writes
READABLE_FORMATS = (1, 2, 3)  # what Bundle.load reads
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
MAX_NAME_BYTES = 200  # a bundle's or a file's name: with a staging suffix, within a file system's 255 bytes
MAX_CURRENT_BYTES = 4096  # CURRENT holds one plain name: what is read of it, whatever it holds
COLD_START_FILE = "cold_start.npz"
INDEX_FILE = "index.faiss"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or inconsistent; the message names the file at fault."""


class Manifest(BaseModel):
    """What a bundle holds and how to check it; ``files`` maps every file to its sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    model_version: str
    dataset: str
    method: str
    bits: int = Field(ge=1, le=32)
    dim: int = Field(gt=0)
    code_layout: CodeLayout
    # Users' layout where it differs from the items' (asymmetric codes: index.codes.PAIRINGS); absent: the same.
    user_code_layout: CodeLayout | None = None
    scale_mode: ScaleMode | None = None
    n_users: int = Field(gt=0)
    n_items: int = Field(gt=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    files: dict[str, str]


@dataclass(frozen=True)
class BundleContent:
    """Everything an exporter provides; ``publish_bundle`` turns it into a verified directory."""

    model_version: str
    dataset: str
    method: str
    bits: int
    dim: int
    code_layout: CodeLayout
    user_codes: npt.NDArray[Any]
    item_codes: npt.NDArray[Any]
    user_ids: list[str]
    item_ids: list[str]
    seen: sp.csr_matrix
    popular: npt.NDArray[np.int64]
    user_scales: npt.NDArray[np.float32] | None = None
    item_scales: npt.NDArray[np.float32] | None = None
    scale_mode: ScaleMode | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    cold_start: ColdStartSection | None = None  # what coding a new user needs (index.cold_start)
    user_code_layout: CodeLayout | None = None  # users' layout, where it differs from code_layout (asymmetric codes)


def verify_checksums(bundle: Path, files: dict[str, str], manifest_path: Path) -> None:
    """Every listed file present and matching its sha256; ``BundleError`` names the first that does not."""
    for name in files:
        if Path(name).name != name:
            raise BundleError(f"{manifest_path}: file name {name!r} is not a plain name")
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle / name}: missing")
    hashed = checksums([bundle / name for name in files], partial(read_part, read=sha256_of))  # BundleError naming it
    actual = dict(zip(files, hashed, strict=True))
    for name, digest in files.items():
        if actual[name] != digest:
            file = bundle / name
            raise BundleError(f"{file}: checksum mismatch (manifest {digest[:12]}…, file {actual[name][:12]}…)")


def checksums(paths: list[Path], hash_one: Callable[[Path], str] | None = None) -> list[str]:
    """``hash_one`` (default ``sha256_of``) of each path, in threads: hashlib lets go of the GIL on large blocks, so a
    bundle of one large file and several smaller ones takes about the time of its largest."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(len(paths), usable_cores())) as pool:
        return list(pool.map(hash_one or sha256_of, paths))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Write beside the target (``data``, or what ``data`` writes to the path it is given), fsync, then rename:
    readers see the old file or the new one."""
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only mount: the write's own error is the one to report
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _save_npy(path: Path, array: npt.NDArray[Any]) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def _write_lines(path: Path, lines: list[str]) -> None:
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"external ids cannot contain newlines: {line!r}")
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _validate_content(content: BundleContent) -> None:
    item_layout = content.code_layout
    user_layout = content.user_code_layout or item_layout
    check_pairing(user_layout, item_layout, content.user_scales is not None or content.item_scales is not None)
    for side, layout, codes, ids in (
        ("user", user_layout, content.user_codes, content.user_ids),
        ("item", item_layout, content.item_codes, content.item_ids),
    ):
        width = code_width(layout, content.dim)
        expected_dtype = code_dtype(layout)
        if codes.dtype != expected_dtype or codes.shape != (len(ids), width):
            raise ValueError(
                f"{side} codes must be {np.dtype(expected_dtype).name} [{len(ids)}, {width}] for "
                f"{layout} d={content.dim}, got {codes.dtype} {list(codes.shape)}"
            )
    check_scales(user_layout, content.dim, content.user_scales, content.scale_mode, len(content.user_ids))
    check_scales(item_layout, content.dim, content.item_scales, content.scale_mode, len(content.item_ids))
    if content.cold_start is not None:
        content.cold_start.check(n_items=len(content.item_ids), dim=content.dim, layout=user_layout)
    if content.seen.shape != (len(content.user_ids), len(content.item_ids)):
        raise ValueError(f"seen matrix has shape {content.seen.shape}, expected (n_users, n_items)")
    # What a loader refuses is never written: a model whose training diverged is not published, nor made CURRENT.
    for _, name, array, _ in value_parts(content, user_layout, item_layout):
        if array is not None and not all_finite(np.asarray(array)):
            raise ValueError(f"{name} hold NaN or infinite values (the training diverged?): nothing was published")


def publish_bundle(root: Path, content: BundleContent, *, make_current: bool = True) -> Path:
    """Write a bundle under ``root/<model_version>`` atomically and (optionally) point CURRENT at it."""
    _validate_content(content)
    check_plain_name(content.model_version, "model version")
    root.mkdir(parents=True, exist_ok=True)
    final = root / content.model_version
    if final.exists():
        raise BundleError(f"{final}: a bundle with this model version already exists")
    tmp = root / f"{content.model_version}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _save_npy(tmp / "user_codes.npy", content.user_codes)
        _save_npy(tmp / "item_codes.npy", content.item_codes)
        if content.user_scales is not None:
            _save_npy(tmp / "user_scales.npy", content.user_scales.astype(np.float32))
        if content.item_scales is not None:
            _save_npy(tmp / "item_scales.npy", content.item_scales.astype(np.float32))
        _write_lines(tmp / "user_ids.txt", content.user_ids)
        _write_lines(tmp / "item_ids.txt", content.item_ids)
        seen = content.seen.tocsr()
        seen.sort_indices()
        with (tmp / "seen.npz").open("wb") as handle:
            np.savez(handle, indptr=seen.indptr.astype(np.int64), indices=seen.indices.astype(np.int64))
        _save_npy(tmp / "popular.npy", np.asarray(content.popular, dtype=np.int64))
        if content.cold_start is not None:
            content.cold_start.save(tmp / COLD_START_FILE)
        written = sorted(tmp.iterdir())
        files = dict(zip((p.name for p in written), checksums(written), strict=True))
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_version=content.model_version,
            dataset=content.dataset,
            method=content.method,
            bits=content.bits,
            dim=content.dim,
            code_layout=content.code_layout,
            user_code_layout=None if content.user_code_layout is content.code_layout else content.user_code_layout,
            scale_mode=content.scale_mode
            if content.user_scales is not None or content.item_scales is not None
            else None,
            n_users=len(content.user_ids),
            n_items=len(content.item_ids),
            metrics=content.metrics,
            training=content.training,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            files=files,
        )
        # A symmetric bundle's manifest names no user layout, so readers that predate the field still load it.
        unset = {"user_code_layout"} if manifest.user_code_layout is None else set()
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2, exclude=unset), encoding="utf-8")
        for path in tmp.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        set_current(root, content.model_version)
    return final


def check_plain_name(name: str, what: str) -> None:
    """Bundle and file names are single path components that readers accept (no '/', no leading '.'), that fit a
    file system's 255 bytes with a staging suffix, and that ``CURRENT``'s one line can hold (no control characters)."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or ".tmp-" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES
    ):
        raise BundleError(
            f"{what} must be a plain name (no '/', no leading '.', no '.tmp-', no control characters, at most "
            f"{MAX_NAME_BYTES} bytes), got {name[:300]!r}"
        )


def set_current(root: Path, model_version: str) -> None:
    """Point ``CURRENT`` at a published bundle (one atomic rename)."""
    if not (root / model_version / MANIFEST).is_file():
        raise BundleError(f"{root / model_version}: no published bundle to make current")
    write_file_atomically(root / CURRENT, f"{model_version}\n".encode())


def resolve_bundle_path(path: Path) -> Path:
    """Accept a bundle directory or a root holding ``CURRENT``; return the bundle directory."""
    if (path / MANIFEST).is_file():
        return path
    current = path / CURRENT
    if current.is_file():
        raw = current.read_bytes()[:MAX_CURRENT_BYTES]
        try:
            name = raw.decode("utf-8").strip()
            check_plain_name(name, "bundle name")
        except (UnicodeDecodeError, BundleError) as error:
            raise BundleError(f"{current}: expected a bundle name, got {raw[:200]!r}") from error
        if not (path / name).is_dir():
            raise BundleError(f"{current}: names {name!r}, which is not a bundle directory of {path}")
        return path / name
    raise BundleError(f"{path}: neither a bundle (no {MANIFEST}) nor a bundle root (no {CURRENT})")


T = TypeVar("T")


def _load_npy(path: Path) -> npt.NDArray[Any]:
    with path.open("rb") as handle:  # opened here: np.load leaves its own handle open when the file is not an array
        array: npt.NDArray[Any] = np.load(handle, allow_pickle=False)
    return array


def _map_npy(path: Path) -> npt.NDArray[Any]:
    """The array of a ``.npy`` file, memory-mapped read-only: the processes that load one bundle (the service's
    workers) share its pages through the page cache instead of each holding a copy."""
    return np.asarray(np.lib.format.open_memmap(path, mode="r"))  # a plain array viewing the map, which it keeps


def _load_seen(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    seen = read_npz(path)  # mapped: 200M interactions are 1.6 GB, which every worker would otherwise hold
    if set(seen) != {"indptr", "indices"}:
        raise ValueError(f"expected arrays indptr and indices, got {sorted(seen)}")
    return seen["indptr"], seen["indices"]


def read_part(file: Path, read: Callable[[Path], T], refusals: tuple[type[Exception], ...] = ()) -> T:
    """``read(file)``, or ``BundleError`` naming the file whatever went wrong: a file that passes its checksum can
    still be unreadable (a publisher that wrote garbage, then its digest), and no reader's own exception
    (``BadZipFile``, ``zlib.error``, ``UnicodeDecodeError``, ``PermissionError``…) may pass for anything but a bad
    bundle. ``refusals``: the reader's own exceptions, whose message says what is wrong and is kept as it is."""
    try:
        return read(file)
    except BundleError:
        raise
    except refusals as error:  # the reader's own refusal, which says what is wrong
        raise BundleError(f"{file}: {error}") from error
    except Exception as error:  # every other failure to read a part is this one refusal
        raise BundleError(f"{file}: unreadable ({type(error).__name__}: {error})") from error


KIND_NAMES = {"f": "floats", "u": "unsigned bytes", "iu": "integers"}


def check_array(file: Path, name: str, array: npt.NDArray[Any], kinds: str) -> None:
    """Refuse an array whose dtype kind is not one of ``kinds``, or a float array holding NaN or infinity: a NaN
    code scores nothing and a NaN scale every item alike, so either would be served as empty or arbitrary answers."""
    if array.dtype.kind not in kinds:
        raise BundleError(f"{file}: {name} must be {KIND_NAMES[kinds]}, got {array.dtype}")
    if not all_finite(array):
        raise BundleError(f"{file}: NaN or infinite values in {name}")


def value_parts(
    holder: Bundle | BundleContent, user_layout: CodeLayout, item_layout: CodeLayout
) -> list[tuple[str, str, npt.NDArray[Any] | None, str]]:
    """The parts whose values a reader trusts, as (file, name, array or None, dtype kinds): the codes, the scales,
    the cold-start arrays. One list for both sides: the loader checks them, the publisher refuses non-finite ones."""
    parts: list[tuple[str, str, npt.NDArray[Any] | None, str]] = [
        ("user_codes.npy", "the user codes", holder.user_codes, np.dtype(code_dtype(user_layout)).kind),
        ("item_codes.npy", "the item codes", holder.item_codes, np.dtype(code_dtype(item_layout)).kind),
        ("user_scales.npy", "the user scales", holder.user_scales, "f"),
        ("item_scales.npy", "the item scales", holder.item_scales, "f"),
    ]
    if holder.cold_start is not None:
        parts += [(COLD_START_FILE, f"the cold-start {name!r}", array, array.dtype.kind)
                  for name, array in holder.cold_start.to_arrays().items()]  # fmt: skip
    return parts


def all_finite(array: npt.NDArray[Any]) -> bool:
    """False when a float array holds NaN or infinity (other kinds always pass); chunked, so that no boolean copy of
    a catalogue is made."""
    if array.dtype.kind != "f":
        return True
    flat = array.reshape(-1)
    return all(np.isfinite(flat[start : start + (1 << 24)]).all() for start in range(0, flat.size, 1 << 24))


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified, loaded bundle.

    ``item_codes`` is memory-mapped read-only (the bundle's files are never rewritten in place): what every search
    backend starts from, shared by the processes that load the bundle; a backend that needs the codes elsewhere
    copies them itself.

    Example::

        bundle = Bundle.load(Path("var/bundles"))  # follows CURRENT
        row = bundle.user_row("u42")               # None for an unknown user
    """

    path: Path
    manifest: Manifest
    user_codes: npt.NDArray[Any]
    item_codes: npt.NDArray[Any]
    user_ids: IdMap
    item_ids: IdMap
    seen_indptr: npt.NDArray[np.int64]
    seen_indices: npt.NDArray[np.int64]
    popular: npt.NDArray[np.int64]
    user_scales: npt.NDArray[np.float32] | None = None
    item_scales: npt.NDArray[np.float32] | None = None
    cold_start: ColdStartSection | None = None

    @property
    def layout(self) -> CodeLayout:
        """The items' code layout (and the users', unless ``user_layout`` says otherwise)."""
        return self.manifest.code_layout

    @property
    def user_layout(self) -> CodeLayout:
        return self.manifest.user_code_layout or self.manifest.code_layout

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def index_path(self) -> Path | None:
        return self.path / INDEX_FILE if INDEX_FILE in self.manifest.files else None

    def user_row(self, user_id: str) -> int | None:
        return self.user_ids.row(user_id)

    def item_row(self, item_id: str) -> int | None:
        return self.item_ids.row(item_id)

    def item_rows(self, item_ids: list[str]) -> npt.NDArray[np.int64]:
        """Rows of the known ones among ``item_ids`` (unknown ids are skipped), without repeats."""
        rows = {row for row in map(self.item_ids.row, item_ids) if row is not None}
        return np.array(sorted(rows), dtype=np.int64)

    def seen_items(self, row: int) -> npt.NDArray[np.int64]:
        return self.seen_indices[self.seen_indptr[row] : self.seen_indptr[row + 1]]

    @classmethod
    def load(cls, path: Path) -> Bundle:
        """Load and verify a bundle (or the CURRENT bundle of a root); raise ``BundleError`` if bad."""
        path = resolve_bundle_path(path)
        manifest_path = path / MANIFEST
        manifest = read_manifest(manifest_path)
        required = {"user_codes.npy", "item_codes.npy", "user_ids.txt", "item_ids.txt", "seen.npz", "popular.npy"}
        missing = sorted(required - manifest.files.keys())
        if missing:
            raise BundleError(f"{manifest_path}: manifest lists no {', '.join(missing)}")
        verify_checksums(path, manifest.files, manifest_path)
        optional = {name: read_part(path / name, _load_npy) if name in manifest.files else None
                    for name in ("user_scales.npy", "item_scales.npy")}  # fmt: skip
        indptr, indices = read_part(path / "seen.npz", _load_seen)
        bundle = cls(
            path=path,
            manifest=manifest,
            user_codes=read_part(path / "user_codes.npy", _map_npy),
            item_codes=read_part(path / "item_codes.npy", _map_npy),
            user_ids=read_part(path / "user_ids.txt", IdMap.open),
            item_ids=read_part(path / "item_ids.txt", IdMap.open),
            seen_indptr=indptr,
            seen_indices=indices,
            popular=read_part(path / "popular.npy", _load_npy),
            user_scales=optional["user_scales.npy"],
            item_scales=optional["item_scales.npy"],
        )
        if COLD_START_FILE in manifest.files:
            load_section = partial(ColdStartSection.load, format_version=manifest.format_version)
            section = read_part(path / COLD_START_FILE, load_section, refusals=(ValueError,))
            object.__setattr__(bundle, "cold_start", section)
        bundle._check_arrays()
        # copy=False: seen.npz is stored as int64 already, and at catalogue scale a copy is a gigabyte per worker.
        object.__setattr__(bundle, "seen_indptr", indptr.astype(np.int64, copy=False))
        object.__setattr__(bundle, "seen_indices", indices.astype(np.int64, copy=False))
        bundle._check_shapes()
        return bundle

    def _check_arrays(self) -> None:
        """Every array of every file: integers where rows are, floats only finite (NaN codes, scales or cold-start
        weights would serve empty or arbitrary answers, not fail)."""
        parts: list[tuple[str, str, npt.NDArray[Any] | None, str]] = [
            ("seen.npz", "indptr", self.seen_indptr, "iu"),
            ("seen.npz", "indices", self.seen_indices, "iu"),
            ("popular.npy", "the popular items", self.popular, "iu"),
            *value_parts(self, self.user_layout, self.layout),
        ]
        for file, name, array, kinds in parts:
            if array is not None:
                check_array(self.path / file, name, array, kinds)

    def _check_shapes(self) -> None:
        m = self.manifest
        try:
            check_pairing(self.user_layout, self.layout, self.user_scales is not None or self.item_scales is not None)
        except ValueError as error:
            raise BundleError(f"{self.path / MANIFEST}: {error}") from error
        for name, layout, array, rows in (
            ("user_codes.npy", self.user_layout, self.user_codes, m.n_users),
            ("item_codes.npy", self.layout, self.item_codes, m.n_items),
        ):
            width = code_width(layout, m.dim)
            dtype = code_dtype(layout)
            if array.dtype != dtype or array.shape != (rows, width):
                raise BundleError(
                    f"{self.path / name}: expected {np.dtype(dtype).name} [{rows}, {width}], "
                    f"got {array.dtype} {list(array.shape)}"
                )
        for name, ids, rows in (("user_ids.txt", self.user_ids, m.n_users), ("item_ids.txt", self.item_ids, m.n_items)):
            if len(ids) != rows or not ids.distinct():
                raise BundleError(f"{self.path / name}: expected {rows} distinct ids, got {len(ids)}")
        for name, scales, rows in (
            ("user_scales.npy", self.user_scales, m.n_users),
            ("item_scales.npy", self.item_scales, m.n_items),
        ):
            try:
                check_scales(self.layout, m.dim, scales, m.scale_mode, rows)
            except ValueError as error:
                raise BundleError(f"{self.path / name}: {error}") from error
        indptr, indices = self.seen_indptr, self.seen_indices
        if (
            indptr.shape != (m.n_users + 1,)
            or indptr[0] != 0
            or indptr[-1] != indices.size
            or np.any(np.diff(indptr) < 0)
            or (indices.size and (indices.min() < 0 or indices.max() >= m.n_items))
        ):
            raise BundleError(f"{self.path / 'seen.npz'}: not a CSR matrix of {m.n_users} users × {m.n_items} items")
        if self.popular.ndim != 1 or (
            self.popular.size and (self.popular.min() < 0 or self.popular.max() >= m.n_items)
        ):
            raise BundleError(f"{self.path / 'popular.npy'}: expected item rows in [0, {m.n_items})")
        if self.cold_start is not None:
            try:
                self.cold_start.check(n_items=m.n_items, dim=m.dim, layout=self.user_layout)
            except (ValueError, IndexError, KeyError, TypeError) as error:
                raise BundleError(f"{self.path / COLD_START_FILE}: {error}") from error


def read_manifest(path: Path) -> Manifest:
    """The manifest at ``path``; a format version this build does not read is refused in one line naming it, before
    the fields (which that version may name otherwise) are checked."""
    try:
        if path.exists() and not path.is_file():  # a directory; a FIFO would block the read for good
            raise BundleError(f"{path}: not a regular file")
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as error:
        raise BundleError(f"{path}: missing") from error
    try:
        version = json.loads(raw).get("format_version")
    except (ValueError, AttributeError, RecursionError):
        version = None  # not a JSON object, or nested past what json decodes: pydantic names the problem below
    if version is not None and version not in READABLE_FORMATS:
        readable = f"{', '.join(str(v) for v in READABLE_FORMATS[:-1])} and {READABLE_FORMATS[-1]}"
        raise BundleError(f"{path}: bundle format version {version!r}, this build reads format versions {readable}")
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BundleError(f"{path}: invalid manifest at {where!r}: {first['msg']}") from error


def add_file_to_bundle(bundle_path: Path, name: str, data: bytes | Callable[[Path], None]) -> None:
    """Add a derived artifact (the FAISS index) to a published bundle without breaking readers.

    ``data``: the file's bytes, or what writes it to the path it is given (a catalogue's index written by FAISS
    itself, never held as bytes). The file is renamed into place first and the manifest second, each atomically:
    a reader sees either the old manifest (and ignores the new file) or the new one with a matching checksum.
    Afterwards the manifest is read back and the file checked against its checksum, as ``Bundle.load`` will.
    """
    check_plain_name(name, "bundle file name")
    if name == MANIFEST:
        raise BundleError(f"{bundle_path}: the manifest cannot be added as a file")
    manifest_path = bundle_path / MANIFEST
    manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    write_file_atomically(bundle_path / name, data)
    files = dict(manifest.files)
    files[name] = sha256_of(bundle_path / name)
    updated = manifest.model_copy(update={"files": files})
    write_file_atomically(manifest_path, updated.model_dump_json(indent=2).encode())
    verify_checksums(bundle_path, {name: read_manifest(manifest_path).files[name]}, manifest_path)
