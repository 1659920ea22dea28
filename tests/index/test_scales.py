"""Per-node scales (index.codes ScaleMode): dequantization by hand, refusals, exact re-ranking in
ItemIndex, and bundles that carry scales.

Item scales change rankings, so the index must re-rank its Hamming candidates by the scaled inner
product; when the candidates cover every item the answer must be the brute-force top-k exactly
(ties by item id), and a bundle must refuse scales that do not fit its nodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from index.bundle import Bundle, BundleContent, BundleError, publish_bundle
from index.codes import CodeLayout, ScaleMode, check_scales, dequantize, encode_planes2, encode_sign1, pack_bits
from index.item_index import ItemIndex

SIGNS = np.array([[1, -1, 1, 1, -1, -1, 1, -1], [-1, -1, 1, -1, 1, 1, 1, 1]], dtype=np.float32)
LEVELS_Q = np.array([[0, 1, 2, 3, 3, 2, 1, 0], [2, 2, 0, 1, 3, 0, 1, 2]])


# --- dequantize by hand -------------------------------------------------------------------------


def test_segment_scale_one_per_node() -> None:
    codes = encode_sign1(SIGNS)
    scales = np.array([[2.0], [0.5]], dtype=np.float32)
    out = dequantize(codes, CodeLayout.SIGN1, 8, scales, ScaleMode.SEGMENT)
    np.testing.assert_array_equal(out, SIGNS * np.array([[2.0], [0.5]], dtype=np.float32))


def test_segment_scales_four_segments() -> None:
    codes = encode_sign1(SIGNS)
    scales = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.0, 8.0]], dtype=np.float32)
    out = dequantize(codes, CodeLayout.SIGN1, 8, scales, ScaleMode.SEGMENT)
    expected = np.array(
        [[1, -1, 2, 2, -3, -3, 4, -4], [-0.5, -0.5, 0.25, -0.25, 0, 0, 8, 8]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(out, expected)


def test_segment_scales_on_two_bit_levels() -> None:
    codes = encode_planes2(LEVELS_Q)
    scales = np.array([[1.0, 0.5], [2.0, -1.0]], dtype=np.float32)
    out = dequantize(codes, CodeLayout.PLANES2, 8, scales, ScaleMode.SEGMENT)
    expected = np.array(
        [[-3, -1, 1, 3, 1.5, 0.5, -0.5, -1.5], [2, 2, -6, -2, -3, 3, 1, -1]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(out, expected)


def test_level_tables_replace_the_levels() -> None:
    codes = encode_planes2(LEVELS_Q)
    tables = np.array([[-0.7, -0.1, 0.2, 0.9], [-2.0, 0.0, 0.5, 4.0]], dtype=np.float32)
    out = dequantize(codes, CodeLayout.PLANES2, 8, tables, ScaleMode.LEVELS)
    expected = np.array(
        [[-0.7, -0.1, 0.2, 0.9, 0.9, 0.2, -0.1, -0.7], [0.5, 0.5, -2.0, 0.0, 4.0, -2.0, 0.0, 0.5]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(out, expected)
    # without the tables the same codes are the plain levels 2q − 3
    np.testing.assert_array_equal(dequantize(codes, CodeLayout.PLANES2, 8), LEVELS_Q * 2.0 - 3.0)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "scales", "mode", "rows", "message"),
    [
        (CodeLayout.SIGN1, np.ones((3, 1)), ScaleMode.SEGMENT, 2, "scales must be"),
        (CodeLayout.SIGN1, np.ones(2), ScaleMode.SEGMENT, 2, "scales must be"),
        (CodeLayout.SIGN1, np.ones((2, 3)), ScaleMode.SEGMENT, 2, "do not divide dim 8"),
        (CodeLayout.SIGN1, np.ones((2, 0)), ScaleMode.SEGMENT, 2, "do not divide dim 8"),
        (CodeLayout.SIGN1, np.ones((2, 4)), ScaleMode.LEVELS, 2, "level tables need planes2"),
        (CodeLayout.PLANES2, np.ones((2, 3)), ScaleMode.LEVELS, 2, "4 columns"),
        (CodeLayout.PLANES2, np.ones((2, 4)), None, 2, "scale mode"),
        (CodeLayout.FLOAT32, np.ones((2, 1)), ScaleMode.SEGMENT, 2, "binary layout"),
    ],
)
def test_check_scales_refusals(
    layout: CodeLayout, scales: npt.NDArray[np.float64], mode: ScaleMode | None, rows: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_scales(layout, 8, scales, mode, rows)


def test_check_scales_accepts_fitting_scales() -> None:
    check_scales(CodeLayout.SIGN1, 8, np.ones((2, 8)), ScaleMode.SEGMENT, 2)
    check_scales(CodeLayout.PLANES2, 8, np.ones((2, 4)), ScaleMode.LEVELS, 2)
    check_scales(CodeLayout.SIGN1, 8, None, None, 2)


def test_dequantize_refuses_scales_for_other_rows() -> None:
    with pytest.raises(ValueError, match="scales must be"):
        dequantize(encode_sign1(SIGNS), CodeLayout.SIGN1, 8, np.ones((3, 1), np.float32), ScaleMode.SEGMENT)


# --- ItemIndex re-ranking -----------------------------------------------------------------------

N_ITEMS, N_USERS, DIM = 60, 6, 16


def scaled_codes(
    mode: ScaleMode, rows: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], CodeLayout]:
    if mode is ScaleMode.SEGMENT:
        codes = encode_sign1(rng.standard_normal((rows, DIM)))
        return codes, rng.uniform(0.1, 2.0, (rows, 2)).astype(np.float32), CodeLayout.SIGN1
    codes = encode_planes2(rng.integers(0, 4, (rows, DIM)))
    tables = np.sort(rng.standard_normal((rows, 4)), axis=1).astype(np.float32)
    return codes, tables, CodeLayout.PLANES2


def brute_force(
    users: npt.NDArray[np.float32], items: npt.NDArray[np.float32], k: int, exclude: list[npt.NDArray[np.int64]]
) -> list[npt.NDArray[np.int64]]:
    out = []
    for row, excluded in enumerate(exclude):
        scores = (items @ users[row]).astype(np.float64)
        scores[excluded] = -np.inf
        order = np.lexsort((np.arange(items.shape[0]), -scores))[:k]
        out.append(order[np.isfinite(scores[order])])
    return out


@pytest.mark.parametrize("mode", [ScaleMode.SEGMENT, ScaleMode.LEVELS])
def test_reranked_search_is_the_brute_force_top_k_of_scaled_scores(mode: ScaleMode) -> None:
    rng = np.random.default_rng(11)
    items, item_scales, layout = scaled_codes(mode, N_ITEMS, rng)
    # duplicates (same code and scales) tie exactly: they must come out by item id
    items[[7, 41]] = items[3]
    item_scales[[7, 41]] = item_scales[3]
    users, user_scales, _ = scaled_codes(mode, N_USERS, rng)
    exclude = [rng.choice(N_ITEMS, size=size, replace=False).astype(np.int64) for size in (0, 5, 20, 0, 55, 1)]
    exclude[0] = np.array([], dtype=np.int64)
    k = 10
    index = ItemIndex.build(
        items, layout, DIM, device="cpu", item_scales=item_scales, scale_mode=mode, rerank_factor=N_ITEMS
    )
    result = index.search(users, k, exclude=exclude, query_scales=user_scales)

    item_vectors = dequantize(items, layout, DIM, item_scales, mode)
    user_vectors = dequantize(users, layout, DIM, user_scales, mode)
    expected = brute_force(user_vectors, item_vectors, k, exclude)
    plain = brute_force(dequantize(users, layout, DIM), dequantize(items, layout, DIM), k, exclude)
    assert any(not np.array_equal(e, p) for e, p in zip(expected, plain, strict=True))  # scales matter here
    for row in range(N_USERS):
        got = result.ids[row][result.ids[row] >= 0]
        np.testing.assert_array_equal(got, expected[row])
        np.testing.assert_allclose(result.scores[row][: got.size], item_vectors[got] @ user_vectors[row], rtol=1e-6)
    # the user with 55 of 60 items excluded gets the 5 left, then padding
    assert (result.ids[4] >= 0).sum() == 5 and (result.ids[4][5:] == -1).all()
    assert np.isneginf(result.scores[4][5:]).all()


def test_reranked_search_ties_by_item_id() -> None:
    items = encode_sign1(np.ones((6, 8)))  # identical codes
    scales = np.array([[1.0], [2.0], [2.0], [1.0], [2.0], [0.5]], dtype=np.float32)
    index = ItemIndex.build(items, CodeLayout.SIGN1, 8, device="cpu", item_scales=scales, scale_mode=ScaleMode.SEGMENT)
    result = index.search(encode_sign1(np.ones((1, 8))), 5, exclude=[np.array([2], dtype=np.int64)])
    assert result.ids.tolist() == [[1, 4, 0, 3, 5]]
    assert result.scores.tolist() == [[16.0, 16.0, 8.0, 8.0, 4.0]]


def test_small_rerank_factor_returns_candidates_in_exact_scaled_order() -> None:
    rng = np.random.default_rng(5)
    items, item_scales, layout = scaled_codes(ScaleMode.LEVELS, N_ITEMS, rng)
    users, user_scales, _ = scaled_codes(ScaleMode.LEVELS, 3, rng)
    index = ItemIndex.build(
        items, layout, DIM, device="cpu", item_scales=item_scales, scale_mode=ScaleMode.LEVELS, rerank_factor=2
    )
    exclude = [np.arange(0, 60, 3, dtype=np.int64)] * 3
    result = index.search(users, 5, exclude=exclude, query_scales=user_scales)
    user_vectors = dequantize(users, layout, DIM, user_scales, ScaleMode.LEVELS)
    item_vectors = dequantize(items, layout, DIM, item_scales, ScaleMode.LEVELS)
    for row in range(3):
        ids = result.ids[row]
        assert (ids >= 0).all() and not np.isin(ids, exclude[row]).any() and np.unique(ids).size == 5
        scores = item_vectors[ids] @ user_vectors[row]
        np.testing.assert_allclose(result.scores[row], scores, rtol=1e-6)
        assert (np.diff(result.scores[row]) <= 0).all()


def test_build_refuses_item_scales_for_other_rows() -> None:
    items = encode_sign1(np.ones((4, 8)))
    with pytest.raises(ValueError, match="scales must be"):
        ItemIndex.build(
            items, CodeLayout.SIGN1, 8, device="cpu", item_scales=np.ones((5, 1)), scale_mode=ScaleMode.SEGMENT
        )


# --- bundles with scales ------------------------------------------------------------------------


def scaled_content(mode: ScaleMode, version: str = "v1", n_users: int = 5, n_items: int = 7) -> BundleContent:
    rng = np.random.default_rng(0)
    user_codes, user_scales, layout = scaled_codes(mode, n_users, rng)
    item_codes, item_scales, _ = scaled_codes(mode, n_items, rng)
    return BundleContent(
        model_version=version,
        dataset="toy",
        method="bigear" if mode is ScaleMode.SEGMENT else "gnaq",
        bits=layout.bits_per_dim,
        dim=DIM,
        code_layout=layout,
        user_codes=user_codes,
        item_codes=item_codes,
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        seen=sp.csr_matrix((np.ones(3), ([0, 0, 2], [1, 4, 6])), shape=(n_users, n_items)),
        popular=np.arange(n_items, dtype=np.int64),
        user_scales=user_scales,
        item_scales=item_scales,
        scale_mode=mode,
    )


@pytest.mark.parametrize("mode", [ScaleMode.SEGMENT, ScaleMode.LEVELS])
def test_bundle_round_trip_with_scales(tmp_path: Path, mode: ScaleMode) -> None:
    original = scaled_content(mode)
    publish_bundle(tmp_path, original)
    bundle = Bundle.load(tmp_path)
    assert bundle.manifest.scale_mode is mode
    assert bundle.user_scales is not None and bundle.item_scales is not None
    assert original.user_scales is not None and original.item_scales is not None
    np.testing.assert_array_equal(bundle.user_scales, original.user_scales)
    np.testing.assert_array_equal(bundle.item_scales, original.item_scales)
    assert bundle.item_scales.dtype == np.float32
    # the service's index for the bundle re-ranks with the stored item scales
    index = ItemIndex.for_bundle(bundle, device="cpu")
    assert index.rerank is not None and index.rerank.mode is mode
    result = index.search(
        bundle.user_codes, 3, exclude=[bundle.seen_items(r) for r in range(5)], query_scales=bundle.user_scales
    )
    users = dequantize(bundle.user_codes, bundle.layout, DIM, bundle.user_scales, mode)
    items = dequantize(bundle.item_codes, bundle.layout, DIM, bundle.item_scales, mode)
    expected = brute_force(users, items, 3, [bundle.seen_items(r) for r in range(5)])
    for row in range(5):
        np.testing.assert_array_equal(result.ids[row], expected[row])


def test_bundle_without_scales_records_no_scale_mode(tmp_path: Path) -> None:
    content = scaled_content(ScaleMode.SEGMENT)
    plain = BundleContent(**{**content.__dict__, "user_scales": None, "item_scales": None})
    publish_bundle(tmp_path, plain)
    bundle = Bundle.load(tmp_path)
    assert bundle.manifest.scale_mode is None and bundle.user_scales is None and bundle.item_scales is None


@pytest.mark.parametrize("side", ["user_scales", "item_scales"])
def test_publish_refuses_scales_with_the_wrong_number_of_rows(tmp_path: Path, side: str) -> None:
    content = scaled_content(ScaleMode.SEGMENT)
    scales = getattr(content, side)
    bad = BundleContent(**{**content.__dict__, side: np.concatenate([scales, scales[:1]])})
    with pytest.raises(ValueError, match="scales must be"):
        publish_bundle(tmp_path, bad)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_publish_refuses_scales_without_a_mode(tmp_path: Path) -> None:
    content = scaled_content(ScaleMode.SEGMENT)
    with pytest.raises(ValueError, match="scale mode"):
        publish_bundle(tmp_path, BundleContent(**{**content.__dict__, "scale_mode": None}))


def test_load_refuses_stored_scales_with_the_wrong_number_of_rows(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, scaled_content(ScaleMode.LEVELS))
    victim = path / "item_scales.npy"
    np.save(victim, np.ones((8, 4), dtype=np.float32))  # 7 items
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["item_scales.npy"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="item_scales.npy.*scales must be"):
        Bundle.load(tmp_path)


def test_a_far_but_heavy_item_reaches_the_rerank() -> None:
    # Item 1 disagrees with the query on the whole first segment, so Hamming ranks it far down, but its
    # matching second segment weighs a thousand times more: only the heavy-item list can bring it in.
    dim = 16
    rng = np.random.default_rng(5)
    query_bits = rng.integers(0, 2, (1, dim))
    items_bits = rng.integers(0, 2, (2000, dim))  # more items than the 500 heavy ones
    items_bits[1] = query_bits[0]
    items_bits[1, :8] = 1 - query_bits[0, :8]  # far from the query in the first segment only
    scales = np.ones((2000, 2), dtype=np.float32)
    scales[1] = [0.01, 1000.0]
    index = ItemIndex.build(
        pack_bits(items_bits), CodeLayout.SIGN1, dim, device="cpu", item_scales=scales,
        scale_mode=ScaleMode.SEGMENT, rerank_factor=1,
    )  # fmt: skip
    result = index.search(pack_bits(query_bits), 1)
    assert result.ids[0, 0] == 1
