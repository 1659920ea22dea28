"""Bundles round-trip, publish atomically, and a damaged bundle is refused with the file named."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from index.bundle import (
    COLD_START_FILE,
    CURRENT,
    MANIFEST,
    Bundle,
    BundleContent,
    BundleError,
    add_file_to_bundle,
    publish_bundle,
    set_current,
)
from index.codes import CodeLayout, encode_sign1


def content(version: str = "v1", n_users: int = 5, n_items: int = 7, dim: int = 16) -> BundleContent:
    rng = np.random.default_rng(0)
    seen = sp.csr_matrix((np.ones(3), ([0, 0, 2], [1, 4, 6])), shape=(n_users, n_items))
    return BundleContent(
        model_version=version,
        dataset="toy",
        method="ste",
        bits=1,
        dim=dim,
        code_layout=CodeLayout.SIGN1,
        user_codes=encode_sign1(rng.standard_normal((n_users, dim))),
        item_codes=encode_sign1(rng.standard_normal((n_items, dim))),
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        seen=seen,
        popular=np.arange(n_items, dtype=np.int64)[::-1].copy(),
        metrics={"recall@20": 0.5},
    )


def test_round_trip(tmp_path: Path) -> None:
    original = content()
    path = publish_bundle(tmp_path, original)
    assert (tmp_path / CURRENT).read_text().strip() == "v1"
    bundle = Bundle.load(tmp_path)
    assert bundle.path == path
    np.testing.assert_array_equal(bundle.user_codes, original.user_codes)
    np.testing.assert_array_equal(bundle.item_codes, original.item_codes)
    assert bundle.user_ids == original.user_ids and bundle.item_ids == original.item_ids
    assert bundle.user_row("u2") == 2 and bundle.user_row("nobody") is None
    np.testing.assert_array_equal(bundle.seen_items(0), [1, 4])
    np.testing.assert_array_equal(bundle.popular, original.popular)
    assert bundle.manifest.metrics == {"recall@20": 0.5}
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_republishing_a_version_is_refused(tmp_path: Path) -> None:
    publish_bundle(tmp_path, content())
    with pytest.raises(BundleError, match="already exists"):
        publish_bundle(tmp_path, content())


def test_invalid_content_leaves_nothing_behind(tmp_path: Path) -> None:
    publish_bundle(tmp_path, content("good"))
    bad = content("bad")
    bad = BundleContent(**{**bad.__dict__, "item_codes": bad.item_codes[:, :1]})
    with pytest.raises(ValueError, match="item codes"):
        publish_bundle(tmp_path, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT, "good"]
    assert Bundle.load(tmp_path).manifest.model_version == "good"


@pytest.mark.parametrize("victim", ["item_codes.npy", "user_ids.txt", "seen.npz", "popular.npy"])
def test_a_corrupted_file_is_refused_naming_it(tmp_path: Path, victim: str) -> None:
    path = publish_bundle(tmp_path, content())
    data = bytearray((path / victim).read_bytes())
    data[-1] ^= 0xFF
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{victim}: checksum mismatch"):
        Bundle.load(tmp_path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, content())
    os.remove(path / "user_codes.npy")
    with pytest.raises(BundleError, match="user_codes.npy: missing"):
        Bundle.load(path)


def test_a_half_written_manifest_is_refused(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, content())
    text = (path / MANIFEST).read_text()
    (path / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="manifest.json: invalid manifest"):
        Bundle.load(path)


def test_consistent_checksums_but_wrong_shapes_are_refused(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, content())
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["n_items"] = 8  # says 8 items, the files hold 7
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"item_codes.npy: expected uint8 \[8, 2\]"):
        Bundle.load(path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, content())
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = 99
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        Bundle.load(path)


def test_current_must_name_a_published_bundle(tmp_path: Path) -> None:
    publish_bundle(tmp_path, content())
    with pytest.raises(BundleError, match="no published bundle"):
        set_current(tmp_path, "v2")
    (tmp_path / CURRENT).write_text("../elsewhere\n")
    with pytest.raises(BundleError, match="expected a bundle name"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="neither a bundle"):
        Bundle.load(tmp_path / "missing")


BROKEN_ROOTS = {  # what a careless publisher or operator leaves under a bundle root, and what the refusal names
    "CURRENT not UTF-8": (lambda root: (root / CURRENT).write_bytes(b"\xff\xfe\x00v1\n"), "CURRENT: expected a"),
    "CURRENT names a file": (lambda root: (root / CURRENT).write_text("MANIFEST.txt\n"), "not a bundle directory"),
    "CURRENT names nothing": (lambda root: (root / CURRENT).write_text("v9\n"), "'v9', which is not a bundle"),
    "CURRENT is huge": (lambda root: (root / CURRENT).write_bytes(b"v" * 10_000_000), "CURRENT: expected a"),
    "CURRENT has a NUL": (lambda root: (root / CURRENT).write_bytes(b"v1\x00\n"), "CURRENT: expected a"),
    "manifest nested deep": (
        lambda root: (root / "v1" / MANIFEST).write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        "manifest.json: invalid manifest",
    ),
    "manifest a FIFO": (
        lambda root: ((root / "v1" / MANIFEST).unlink(), os.mkfifo(root / "v1" / MANIFEST)),
        "manifest.json: not a regular file",
    ),
    "manifest a directory": (
        lambda root: ((root / "v1" / MANIFEST).unlink(), (root / "v1" / MANIFEST).mkdir()),
        "manifest.json: not a regular file",
    ),
}


@pytest.mark.parametrize("break_root", BROKEN_ROOTS.values(), ids=BROKEN_ROOTS.keys())
def test_a_broken_root_or_manifest_is_a_bundle_error_naming_it(
    tmp_path: Path, break_root: tuple[Callable[[Path], object], str]
) -> None:
    """A BundleError, not whatever the file system or the JSON decoder raised: the service refuses such a bundle
    (409) rather than retrying it as a failure that may pass."""
    publish_bundle(tmp_path, content())
    (tmp_path / "MANIFEST.txt").write_text("a file beside the bundles")
    breaking, named = break_root
    breaking(tmp_path)
    with pytest.raises(BundleError, match=re.escape(named)):
        Bundle.load(tmp_path)


def test_ids_with_unusual_line_breaks_round_trip(tmp_path: Path) -> None:
    original = content()
    odd = BundleContent(**{**original.__dict__, "item_ids": ["a\u2028b", "c\x0cd", *original.item_ids[2:]]})
    publish_bundle(tmp_path, odd)
    assert Bundle.load(tmp_path).item_ids == odd.item_ids


@pytest.mark.parametrize(
    "version", ["../escaped", ".hidden", "a/b", "v.tmp-1234", "v\n1", "v\x001", "v" * 201, "é" * 101]
)
def test_model_versions_must_be_plain_names(tmp_path: Path, version: str) -> None:
    with pytest.raises(BundleError, match="plain name"):
        publish_bundle(tmp_path / "root", content(version))
    assert not (tmp_path / "escaped").exists()


def test_added_files_must_be_plain_names(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, content())
    for name in ("../v0/manifest.json", MANIFEST):
        with pytest.raises(BundleError):
            add_file_to_bundle(path, name, b"{}")
    assert Bundle.load(tmp_path).manifest.model_version == "v1"


def test_item_rows_of_no_items_leaves_the_id_map_unbuilt(tmp_path: Path) -> None:
    publish_bundle(tmp_path, content())
    bundle = Bundle.load(tmp_path)
    assert bundle.item_rows([]).dtype == np.int64 and bundle.item_rows([]).size == 0
    assert "_item_rows" not in vars(bundle)  # unknown users without a history never pay for it
    assert bundle.item_rows(["i6", "nope", "i1", "i6"]).tolist() == [1, 6]
    assert bundle.seen_indices.dtype == np.int64 and bundle.seen_items(0).tolist() == [1, 4]


@pytest.mark.parametrize("side", ["user", "item"])
def test_repeated_ids_are_refused(tmp_path: Path, side: str) -> None:
    original = content()
    ids = [*getattr(original, f"{side}_ids")]
    ids[3] = ids[1]
    publish_bundle(tmp_path, dataclasses.replace(original, **{f"{side}_ids": ids}))
    with pytest.raises(BundleError, match=f"{side}_ids.txt: expected [57] distinct ids"):
        Bundle.load(tmp_path)


def test_id_lookup_gives_the_rows_a_dict_of_the_ids_gives(tmp_path: Path) -> None:
    original = content()
    publish_bundle(tmp_path, original)
    bundle = Bundle.load(tmp_path)
    for side, lookup in (("user", bundle.user_row), ("item", bundle.item_row)):
        ids: list[str] = getattr(original, f"{side}_ids")
        rows = {external: row for row, external in enumerate(ids)}
        assert [lookup(external) for external in ids] == [rows[external] for external in ids]
        assert lookup("nobody") is None and lookup("") is None and lookup(ids[0] + "x") is None
    assert bundle.item_rows([original.item_ids[5], "nobody", original.item_ids[2], original.item_ids[5]]).tolist() == [
        2,
        5,
    ]
    assert bundle.item_rows([]).tolist() == []


def asymmetric(original: BundleContent) -> BundleContent:
    """The same bundle with 2-bit user codes (levels ±3 where the sign code had ±1)."""
    users = np.concatenate([original.user_codes, original.user_codes], axis=1)
    return dataclasses.replace(original, method="hq", user_code_layout=CodeLayout.PLANES2, user_codes=users)


def test_asymmetric_codes_round_trip_and_symmetric_manifests_do_not_name_a_user_layout(tmp_path: Path) -> None:
    publish_bundle(tmp_path / "sym", content())
    assert "user_code_layout" not in json.loads((tmp_path / "sym" / "v1" / MANIFEST).read_text())
    assert Bundle.load(tmp_path / "sym").user_layout is CodeLayout.SIGN1
    original = asymmetric(content())
    publish_bundle(tmp_path / "asym", original)
    bundle = Bundle.load(tmp_path / "asym")
    assert bundle.layout is CodeLayout.SIGN1 and bundle.user_layout is CodeLayout.PLANES2
    np.testing.assert_array_equal(bundle.user_codes, original.user_codes)


def test_asymmetric_user_codes_of_the_items_width_are_refused(tmp_path: Path) -> None:
    wrong = dataclasses.replace(content(), user_code_layout=CodeLayout.PLANES2)  # 2-byte rows where 4 are needed
    with pytest.raises(ValueError, match=r"user codes must be uint8 \[5, 4\] for planes2"):
        publish_bundle(tmp_path, wrong)
    assert not any(tmp_path.iterdir())


def test_asymmetric_codes_with_scales_or_without_an_exact_pairing_are_refused(tmp_path: Path) -> None:
    scaled = dataclasses.replace(asymmetric(content()), item_scales=np.ones((7, 1), np.float32), scale_mode="segment")
    with pytest.raises(ValueError, match="scales are not supported with asymmetric codes"):
        publish_bundle(tmp_path, scaled)
    floats = dataclasses.replace(content(), user_code_layout=CodeLayout.FLOAT32)
    with pytest.raises(ValueError, match="cannot be scored against"):
        publish_bundle(tmp_path, floats)


def forge(path: Path, name: str, data: bytes) -> None:
    """Replace a part of a published bundle and recompute its checksum, as a buggy publisher would: the bundle
    passes every digest and only reading the part shows what is wrong with it."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (path / MANIFEST).write_text(json.dumps(manifest))


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


UNREADABLE_PARTS = {
    "a zip that is not one": ("seen.npz", lambda: b"PK\x03\x04 not a zip archive", "seen.npz: unreadable"),
    "an npz missing an array": ("seen.npz", lambda: npz(indptr=np.zeros(6, np.int64)), "seen.npz: unreadable"),
    "float seen items": (
        "seen.npz",
        lambda: npz(indptr=np.array([0, 2, 2, 3, 3, 3]), indices=np.array([1.0, 4.0, 6.0])),
        "seen.npz: indices must be integers",
    ),
    "garbage codes": ("user_codes.npy", lambda: b"\x93NUMPY garbage", "user_codes.npy: unreadable"),
    "codes cut short": ("item_codes.npy", lambda: npy(np.zeros((7, 2), np.uint8))[:-3], "item_codes.npy: unreadable"),
    "ids that are not UTF-8": ("item_ids.txt", lambda: b"i0\n\xff\xfe\n", "item_ids.txt: unreadable"),
    "float popular items": ("popular.npy", lambda: npy(np.arange(7.0)), "popular.npy: the popular items must be"),
    "pickled popular items": (
        "popular.npy",
        lambda: npy(np.array([object()] * 7, dtype=object)),
        "popular.npy: unreadable",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE_PARTS))
def test_a_part_that_passes_its_checksum_but_cannot_be_read_is_refused_naming_it(tmp_path: Path, case: str) -> None:
    name, data, message = UNREADABLE_PARTS[case]
    path = publish_bundle(tmp_path, content())
    forge(path, name, data())
    with pytest.raises(BundleError, match=re.escape(message)):
        Bundle.load(path)


@pytest.mark.parametrize(("name", "bad"), [("user_codes.npy", np.nan), ("item_codes.npy", np.inf)])
def test_float_codes_with_nan_or_infinity_are_refused(tmp_path: Path, name: str, bad: float) -> None:
    original = content()
    rng = np.random.default_rng(1)
    floats = dataclasses.replace(
        original, code_layout=CodeLayout.FLOAT32, bits=32,
        user_codes=rng.standard_normal((5, 16)).astype(np.float32),
        item_codes=rng.standard_normal((7, 16)).astype(np.float32),
    )  # fmt: skip
    path = publish_bundle(tmp_path, floats)
    codes = np.load(path / name)
    codes[2, 3] = bad
    forge(path, name, npy(codes))
    with pytest.raises(BundleError, match=f"{name}: NaN or infinite values"):
        Bundle.load(path)


@pytest.mark.parametrize(
    ("kind", "name", "array"),
    [("bigear_bundle", "item_scales.npy", None), ("ste_bundle", COLD_START_FILE, "item_layer_sum")],
)
def test_nan_in_scales_or_cold_start_weights_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, name: str, array: str | None
) -> None:
    trained = request.getfixturevalue(kind)
    path = tmp_path / "copy"
    shutil.copytree(Bundle.load(trained.root).path, path)
    if array is None:
        values = np.load(path / name)
        values[0, 0] = np.nan
        forge(path, name, npy(values))
    else:
        with np.load(path / name) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays[array] = arrays[array].copy()
        arrays[array].reshape(-1)[5] = np.nan
        forge(path, name, npz(**arrays))
    with pytest.raises(BundleError, match=f"{name}: NaN or infinite values"):
        Bundle.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("part", ["user codes", "item codes", "item scales"])
def test_non_finite_floats_are_never_published_nor_made_current(tmp_path: Path, part: str, bad: float) -> None:
    """What the loader refuses is not written: a diverged model would otherwise become CURRENT and stop the
    service's next start."""
    publish_bundle(tmp_path, content("v1"))
    rng = np.random.default_rng(1)
    floats = dataclasses.replace(
        content("v2"),
        code_layout=CodeLayout.FLOAT32,
        user_codes=rng.standard_normal((5, 16)).astype(np.float32),
        item_codes=rng.standard_normal((7, 16)).astype(np.float32),
    )
    if part == "item scales":
        floats = dataclasses.replace(content("v2"), item_scales=np.ones((7, 1), np.float32), scale_mode="segment")
    array = {"user codes": floats.user_codes, "item codes": floats.item_codes, "item scales": floats.item_scales}[part]
    assert array is not None
    array.reshape(-1)[3] = bad
    with pytest.raises(ValueError, match=f"the {part} hold NaN or infinite values"):
        publish_bundle(tmp_path, floats)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT, "v1"]
    assert (tmp_path / CURRENT).read_text().strip() == "v1"
