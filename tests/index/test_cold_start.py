"""The cold-start section round-trips through a bundle, and a section a new user's code would trip on is refused
when the bundle loads, naming the file and the array; the sum of the items' layers gives the mean of a new user's
layers; format 1 and 2 bundles (the layers themselves) still load and code as format 3, unknown formats do not."""

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
ITEM_LAYERS = np.random.default_rng(2).standard_normal((3, N_ITEMS, DIM)).astype(np.float32)  # K = 3


def section(
    *,
    hops: tuple[int, ...] = (0, 1, 3),
    mlp_layers: int = 2,
    max_level: int = 3,
    item_layers: npt.NDArray[np.float32] = ITEM_LAYERS,
) -> ColdStartSection:
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
        item_layer_sum=item_layers.sum(axis=0),
        layers=len(item_layers),
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


def with_layers(cold: ColdStartSection, item_layers: npt.NDArray[np.float32] = ITEM_LAYERS) -> dict[str, Any]:
    """The section's arrays as formats 1 and 2 wrote them: the items' layers in place of their sum and K."""
    arrays = {k: v for k, v in cold.to_arrays().items() if k not in ("item_layer_sum", "layers")}
    return {**arrays, "item_layers": item_layers}


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
        "method", "item_layer_sum", "layers", "item_degree", "hq_step", "hq_max_level", "w1", "b1", "w2", "b2",
        "codebook", "offsets", "hash_mlp_layers", "user_medians", "hash_seed", "hash_bits", "hash_groups", "hash_hops",
        "hash_item_degree", "hash_item_degree_total", "hash_trivial_along", "hash_item_basis",
    }  # fmt: skip


def dropped(name: str) -> Any:
    return lambda arrays: {k: v for k, v in arrays.items() if k != name}


def changed(name: str, value: Any) -> Any:
    return lambda arrays: {**arrays, name: value(arrays[name]) if callable(value) else value}


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("item_layer_sum", dropped("item_layer_sum")),
        ("item_layer_sum", changed("item_layer_sum", lambda a: a[:-1])),
        ("item_layer_sum", changed("item_layer_sum", lambda a: a[None])),  # a layer stack is not the sum
        ("item_layer_sum", changed("item_layer_sum", lambda a: a.astype(np.int64))),
        ("layers", dropped("layers")),
        ("layers", changed("layers", np.array(0))),
        ("layers", changed("layers", np.array(-3))),
        ("layers", changed("layers", np.array([3]))),
        ("layers", changed("layers", np.array(3.0))),
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
    old = {k: v for k, v in with_layers(original).items() if k not in ("hash_hops", "hash_mlp_layers")}
    rewrite(path, old, format_version=1)
    loaded = Bundle.load(path).cold_start
    assert loaded is not None and loaded.hashed is not None
    assert loaded.hashed.hops == (0,) and len(loaded.hashed.weights) == 2
    for items in HISTORIES:
        np.testing.assert_array_equal(loaded.code(items, hashed_ego=True), original.code(items, hashed_ego=True))
    rewrite(path, {**old, "hash_mlp_layers": np.array(2)}, format_version=2)  # format 2 always writes both
    with pytest.raises(BundleError, match=f"{COLD_START_FILE}: no array 'hash_hops'"):
        Bundle.load(path)


def test_a_format_2_section_codes_new_users_as_format_3_does(tmp_path: Path) -> None:
    """Format 2 stored the items' layers [K, n_items, dim]; read, they are summed, and a new user gets the code and
    representation a format 3 section of the same layers gives."""
    cold = section()
    three = Bundle.load(published(tmp_path / "3", cold)).cold_start
    path = published(tmp_path / "2", cold)
    rewrite(path, with_layers(cold), format_version=2)
    two = Bundle.load(path).cold_start
    assert three is not None and two is not None and two.layers == three.layers == 3
    for items in HISTORIES:
        for ego in (False, True):
            np.testing.assert_array_equal(two.code(items, hashed_ego=ego), three.code(items, hashed_ego=ego))
            want = three.representation(items, hashed_ego=ego)
            np.testing.assert_allclose(two.representation(items, hashed_ego=ego), want, rtol=1e-6, atol=1e-6)
    for arrays, name in (
        (with_layers(cold, ITEM_LAYERS[:0]), "item_layers"),  # no layer: nothing to sum
        (with_layers(cold, ITEM_LAYERS[:, :-1]), "item_layer_sum"),  # one item short, found in the sum
        ({k: v for k, v in with_layers(cold).items() if k != "item_layers"}, "item_layers"),
    ):
        rewrite(path, arrays, format_version=2)
        with pytest.raises(BundleError, match=rf"{COLD_START_FILE}: .*'{name}'") as refused:
            Bundle.load(path)
        assert "\n" not in str(refused.value)
    rewrite(path, with_layers(cold), format_version=3)  # format 3 reads the sum alone
    with pytest.raises(BundleError, match=f"{COLD_START_FILE}: no array 'item_layer_sum'"):
        Bundle.load(path)


def layer_by_layer(
    item_layers: npt.NDArray[np.float32], degree: npt.NDArray[np.float32], ego: npt.NDArray[np.float32], items: Any
) -> npt.NDArray[np.float64]:
    """LightGCN's mean of a new user's layers, every layer propagated on its own (in float64)."""
    weights = 1.0 / np.sqrt(len(items) * np.maximum(degree[items].astype(np.float64), 1.0))
    stack = [ego.astype(np.float64)]
    stack += [(weights[:, None] * layer[items].astype(np.float64)).sum(axis=0) for layer in item_layers]
    out: npt.NDArray[np.float64] = np.mean(stack, axis=0)
    return out


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
def test_the_layer_sum_gives_the_mean_of_the_layers(layers: int) -> None:
    rng = np.random.default_rng(layers)
    item_layers = rng.standard_normal((layers, N_ITEMS, DIM)).astype(np.float32) * rng.uniform(0.1, 10)
    cold = dataclasses.replace(
        section(item_layers=item_layers), item_degree=rng.integers(0, 9, N_ITEMS).astype(np.float32)
    )
    for _ in range(20):
        items = rng.choice(N_ITEMS, rng.integers(1, N_ITEMS + 1), replace=False)
        for hashed_ego in (False, True):
            want = layer_by_layer(item_layers, cold.item_degree, cold.ego(items, hashed_ego=hashed_ego), items)
            got = cold.representation(items, hashed_ego=hashed_ego)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", [0, 4, "3"])
def test_an_unknown_format_version_is_refused_in_one_line_naming_it(tmp_path: Path, version: object) -> None:
    path = published(tmp_path, section())
    fields = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**fields, "format_version": version, "a_later_section": {"x": 1}}))
    with pytest.raises(BundleError) as refused:
        Bundle.load(path)
    message = str(refused.value)
    assert f"format version {version!r}" in message and "reads format versions 1, 2 and 3" in message
    assert "\n" not in message
