"""The cold-start section round-trips through a bundle, and a section a new user's code would trip on is refused
when the bundle loads, naming the file and the array; format 1 bundles still load, unknown formats do not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from index.bundle import COLD_START_FILE, MANIFEST, Bundle, BundleError, publish_bundle, sha256_of
from index.cold_start import ColdStartSection, HashedDecoder
from index.encoders import OddLevelEncoder
from index.hash_codes import graph_codes
from tests.index.test_bundle import asymmetric, content

N_USERS, N_ITEMS, DIM = 5, 7, 16


def section(*, hops: tuple[int, ...] = (0, 1, 3), mlp_layers: int = 2, max_level: int = 3) -> ColdStartSection:
    """A hashed hq section for test_bundle.content()'s 7 items, its hash codes from a small graph."""
    rng = np.random.default_rng(1)
    train = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.5).astype(np.float32))
    bits, groups = 8 * len(hops), len(hops)
    _, arrays = graph_codes(train, bits, seed=3, hops=hops)
    hashed = HashedDecoder(
        seed=3,
        bits=bits,
        groups=groups,
        hops=hops,
        user_medians=arrays["user"],
        codebook=rng.standard_normal((groups * 256, DIM)).astype(np.float32),
        offsets=np.arange(groups, dtype=np.int64) * 256,
        weights=tuple(rng.standard_normal((DIM, DIM)).astype(np.float32) for _ in range(mlp_layers)),
        biases=tuple(rng.standard_normal(DIM).astype(np.float32) for _ in range(mlp_layers)),
        propagation={k: v for k, v in arrays.items() if k not in ("user", "item")},
    )
    return ColdStartSection(
        encoder=OddLevelEncoder(0.05, max_level),
        item_layers=rng.standard_normal((3, N_ITEMS, DIM)).astype(np.float32),
        item_degree=np.diff(train.tocsc().indptr).astype(np.float32),
        hashed=hashed,
    )


def published(root: Path, cold: ColdStartSection) -> Path:
    """A bundle of 2-bit users and 1-bit items carrying ``cold``."""
    return publish_bundle(root, dataclasses.replace(asymmetric(content()), cold_start=cold))


def rewrite(path: Path, arrays: dict[str, npt.NDArray[Any]], **manifest: Any) -> None:
    """Replace the bundle's section file (and manifest fields), its checksum made to match: only the checks that
    read the arrays can refuse it."""
    with (path / COLD_START_FILE).open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    fields = json.loads((path / MANIFEST).read_text())
    fields["files"][COLD_START_FILE] = sha256_of(path / COLD_START_FILE)
    (path / MANIFEST).write_text(json.dumps({**fields, **manifest}))


HISTORIES = [np.array([0]), np.array([1, 3, 5]), np.arange(N_ITEMS)]


def test_a_section_round_trips_through_a_bundle(tmp_path: Path) -> None:
    original = section()
    bundle = Bundle.load(published(tmp_path, original))
    loaded = bundle.cold_start
    assert loaded is not None and loaded.user_layout is bundle.user_layout
    want, got = original.to_arrays(), loaded.to_arrays()
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for items in HISTORIES:
        for hashed_ego in (False, True):
            code = loaded.code(items, hashed_ego=hashed_ego)
            np.testing.assert_array_equal(code, original.code(items, hashed_ego=hashed_ego))
            assert code.dtype == np.uint8 and code.shape == (bundle.user_codes.shape[1],)


def test_the_section_file_keeps_its_array_names(tmp_path: Path) -> None:
    """The names are the on-disk contract that readers of the same format version rely on."""
    published(tmp_path, section())
    with np.load(tmp_path / "v1" / COLD_START_FILE) as archive:
        names = set(archive.files)
    assert names == {
        "method", "item_layers", "item_degree", "hq_step", "hq_max_level", "w1", "b1", "w2", "b2", "codebook",
        "offsets", "hash_mlp_layers", "user_medians", "hash_seed", "hash_bits", "hash_groups", "hash_hops",
        "hash_item_degree", "hash_item_degree_total", "hash_trivial_along", "hash_item_basis",
    }  # fmt: skip


def dropped(name: str) -> Any:
    return lambda arrays: {k: v for k, v in arrays.items() if k != name}


def changed(name: str, value: Any) -> Any:
    return lambda arrays: {**arrays, name: value(arrays[name]) if callable(value) else value}


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("item_layers", dropped("item_layers")),
        ("item_layers", changed("item_layers", lambda a: a[:, :-1])),
        ("item_degree", changed("item_degree", lambda a: a[:-1])),
        ("hq_step", dropped("hq_step")),
        ("hq_step", changed("hq_step", np.array(-1.0))),
        ("hq_max_level", changed("hq_max_level", np.array(2))),
        ("method", changed("method", np.array("bigear"))),
        ("codebook", dropped("codebook")),
        ("codebook", changed("codebook", lambda a: a[:-1])),
        ("w1", changed("w1", lambda a: a[:, :-1])),
        ("b2", dropped("b2")),
        ("hash_hops", dropped("hash_hops")),
        ("hash_hops", changed("hash_hops", np.array([0, 1, 3, 3, 3]))),  # 24 bits do not split in 5
        ("hash_trivial_along", dropped("hash_trivial_along")),
        ("hash_item_basis", changed("hash_item_basis", lambda a: a[:-1])),
        ("user_medians", changed("user_medians", lambda a: a[:, None])),
    ],
)
def test_a_missing_or_ill_shaped_array_is_refused_naming_it(tmp_path: Path, name: str, damage: Any) -> None:
    path = published(tmp_path, section())
    rewrite(path, damage(section().to_arrays()))
    with pytest.raises(BundleError, match=rf"{COLD_START_FILE}: .*'{name}'") as refused:
        Bundle.load(path)
    assert "\n" not in str(refused.value)


def test_a_section_that_codes_users_in_another_layout_is_not_published(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codes new users as sign1, the bundle's users are planes2"):
        published(tmp_path, section(max_level=1))
    assert not (tmp_path / "v1").exists()


def test_a_format_1_bundle_loads_its_section_as_it_was_meant(tmp_path: Path) -> None:
    """Format 1 sections could leave out the hop counts and the decoder's depth: raw-row codes, two layers."""
    original = section(hops=(0,), mlp_layers=2)
    path = published(tmp_path, original)
    old = {k: v for k, v in original.to_arrays().items() if k not in ("hash_hops", "hash_mlp_layers")}
    rewrite(path, old, format_version=1)
    loaded = Bundle.load(path).cold_start
    assert loaded is not None and loaded.hashed is not None
    assert loaded.hashed.hops == (0,) and len(loaded.hashed.weights) == 2
    for items in HISTORIES:
        np.testing.assert_array_equal(loaded.code(items, hashed_ego=True), original.code(items, hashed_ego=True))
    rewrite(path, {**old, "hash_mlp_layers": np.array(2)}, format_version=2)  # format 2 always writes both
    with pytest.raises(BundleError, match=f"{COLD_START_FILE}: no array 'hash_hops'"):
        Bundle.load(path)


@pytest.mark.parametrize("version", [0, 3, "2"])
def test_an_unknown_format_version_is_refused_in_one_line_naming_it(tmp_path: Path, version: object) -> None:
    path = published(tmp_path, section())
    fields = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**fields, "format_version": version, "a_later_section": {"x": 1}}))
    with pytest.raises(BundleError) as refused:
        Bundle.load(path)
    message = str(refused.value)
    assert f"format version {version!r}" in message and "reads format versions 1 and 2" in message
    assert "\n" not in message
