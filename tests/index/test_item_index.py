"""ItemIndex: exact top-k with ties by id, seen-item exclusion, serialisation and the self-check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from index.bundle import INDEX_FILE, Bundle, BundleError
from index.cli import main as index_main
from index.codes import CodeLayout, ScaleMode, dequantize, encode_planes2, encode_sign1
from index.item_index import WARM_MAX_FETCH, IndexSelfCheckError, ItemIndex, warm_reach
from index.retrieval import MAX_K
from index.retrieval.counting_backend import CountingBackend
from index.retrieval.faiss_backend import FaissBinaryBackend
from tests.conftest import TrainedBundle
from tests.index.test_bundle import forge


def brute_force(users: np.ndarray, items: np.ndarray, layout: CodeLayout, dim: int, k: int, exclude: list[np.ndarray]):
    scores = dequantize(users, layout, dim) @ dequantize(items, layout, dim).T
    out = []
    for row, excluded in enumerate(exclude):
        s = scores[row].copy()
        s[excluded] = -np.inf
        order = np.lexsort((np.arange(items.shape[0]), -s))[:k]
        out.append(order[np.isfinite(s[order])])
    return out


@pytest.mark.parametrize(
    ("layout", "backend"),
    [
        (CodeLayout.SIGN1, "faiss-cpu"),
        (CodeLayout.SIGN1, "numpy"),
        (CodeLayout.SIGN1, "torch"),
        (CodeLayout.PLANES2, "faiss-cpu"),
        (CodeLayout.PLANES2, "numpy"),
        (CodeLayout.PLANES2, "torch"),
        (CodeLayout.FLOAT32, "auto"),
    ],
)
def test_search_matches_brute_force_with_exclusions(layout: CodeLayout, backend: str) -> None:
    rng = np.random.default_rng(3)
    dim, n_items = 16, 700
    if layout is CodeLayout.FLOAT32:
        items = rng.standard_normal((n_items, dim)).astype(np.float32)
        users = rng.standard_normal((9, dim)).astype(np.float32)
    elif layout is CodeLayout.SIGN1:
        items, users = encode_sign1(rng.standard_normal((n_items, dim))), encode_sign1(rng.standard_normal((9, dim)))
    else:
        items = encode_planes2(rng.integers(0, 4, (n_items, dim)))
        users = encode_planes2(rng.integers(0, 4, (9, dim)))
    exclude = [rng.choice(n_items, size=rng.integers(0, 300), replace=False).astype(np.int64) for _ in range(9)]
    index = ItemIndex.build(items, layout, dim, device="cpu", backend=backend)
    assert index.backend == {"auto": "faiss-float-cpu", "torch": "torch-cpu"}.get(backend, backend)
    result = index.search(users, 25, exclude=exclude)
    for row, expected in enumerate(brute_force(users, items, layout, dim, 25, exclude)):
        np.testing.assert_array_equal(result.ids[row], expected)
        assert not np.isin(result.ids[row], exclude[row]).any()


def test_heavy_ties_are_broken_by_item_id() -> None:
    # 8-bit codes over 2,000 items: every score is shared by hundreds of items.
    rng = np.random.default_rng(0)
    items = encode_sign1(rng.standard_normal((2000, 8)))
    user = encode_sign1(rng.standard_normal((1, 8)))
    result = ItemIndex.build(items, CodeLayout.SIGN1, 8, device="cpu").search(user, 50)
    expected = brute_force(user, items, CodeLayout.SIGN1, 8, 50, [np.empty(0, np.int64)])[0]
    np.testing.assert_array_equal(result.ids[0], expected)


def test_k_larger_than_catalogue_pads_with_minus_one() -> None:
    items = encode_sign1(np.eye(8) - 0.5)
    result = ItemIndex.build(items, CodeLayout.SIGN1, 8, device="cpu").search(items[:1], 12, exclude=[np.array([0])])
    assert (result.ids[0, :7] >= 0).all() and (result.ids[0, 7:] == -1).all()
    assert 0 not in result.ids[0]


def test_serialised_index_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(1)
    items = encode_sign1(rng.standard_normal((100, 24)))
    index = ItemIndex.build(items, CodeLayout.SIGN1, 24, device="cpu")
    path = tmp_path / "index.faiss"
    path.write_bytes(index.serialize())
    loaded = ItemIndex.load(path, layout=CodeLayout.SIGN1, dim=24, device="cpu")
    loaded.self_check(items)
    np.testing.assert_array_equal(loaded.search(items[:5], 10).ids, index.search(items[:5], 10).ids)


def test_self_check_catches_an_index_that_returns_wrong_codes() -> None:
    rng = np.random.default_rng(2)
    items = encode_sign1(rng.standard_normal((50, 16)))
    other = encode_sign1(rng.standard_normal((50, 16)))
    index = ItemIndex.build(other, CodeLayout.SIGN1, 16, device="cpu")
    with pytest.raises(IndexSelfCheckError):
        index.self_check(items)


def test_wrong_code_width_is_refused() -> None:
    index = ItemIndex.build(encode_sign1(np.ones((4, 16))), CodeLayout.SIGN1, 16, device="cpu")
    with pytest.raises(ValueError, match="query codes"):
        index.search(np.zeros((1, 3), np.uint8), 2)


@pytest.mark.parametrize("backend", ["faiss-cpu", "numpy", "torch"])
def test_asymmetric_search_matches_brute_force_and_survives_serialisation(tmp_path, backend: str) -> None:
    """2-bit queries against 1-bit items: exact top-k with exclusions on every backend, also from a saved index."""
    rng = np.random.default_rng(5)
    dim, n_items = 24, 500
    items = encode_sign1(rng.standard_normal((n_items, dim)))
    users = encode_planes2(rng.integers(0, 4, (7, dim)))
    scores = dequantize(users, CodeLayout.PLANES2, dim) @ dequantize(items, CodeLayout.SIGN1, dim).T
    exclude = [rng.choice(n_items, size=rng.integers(0, 200), replace=False).astype(np.int64) for _ in range(7)]
    built = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="cpu", backend=backend, user_layout=CodeLayout.PLANES2)
    path = tmp_path / "index.faiss"
    path.write_bytes(built.serialize())
    loaded = ItemIndex.load(path, layout=CodeLayout.SIGN1, dim=dim, device="cpu", user_layout=CodeLayout.PLANES2)
    loaded.self_check(items)
    for index in (built, loaded):
        result = index.search(users, 20, exclude=exclude)
        for row, excluded in enumerate(exclude):
            s = scores[row].copy()
            s[excluded] = -np.inf
            np.testing.assert_array_equal(result.ids[row], np.lexsort((np.arange(n_items), -s))[:20])
    with pytest.raises(ValueError, match=r"query codes must be \[n, 6\]"):
        built.search(encode_sign1(rng.standard_normal((1, dim))), 5)  # a 1-bit user code for a 2-bit query
    with pytest.raises(ValueError, match="index has d=72, the bundle's codes need 24"):
        ItemIndex.load(path, layout=CodeLayout.SIGN1, dim=dim)  # saved for 2-bit queries, opened for 1-bit ones


def small_integer_floats(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Float vectors whose inner products are exact in any summation order and tie a lot (as codes do)."""
    return rng.integers(-3, 4, (n, dim)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 25, 700, 720])
def test_float_search_is_exact_with_ties_by_id_and_exclusions(k: int) -> None:
    rng = np.random.default_rng(8)
    dim, n_items = 16, 700
    items, users = small_integer_floats(rng, n_items, dim), small_integer_floats(rng, 30, dim)
    exclude = [rng.choice(n_items, size=rng.integers(0, 300), replace=False).astype(np.int64) for _ in range(30)]
    index = ItemIndex.build(items, CodeLayout.FLOAT32, dim, device="cpu")
    assert (index.backend, index.on_gpu) == ("faiss-float-cpu", False)
    result = index.search(users, k, exclude=exclude)
    scores = users @ items.T
    for row, expected in enumerate(brute_force(users, items, CodeLayout.FLOAT32, dim, k, exclude)):
        np.testing.assert_array_equal(result.ids[row, : expected.size], expected)
        np.testing.assert_array_equal(result.scores[row, : expected.size], scores[row, expected])
        assert (result.ids[row, expected.size :] == -1).all() and np.isneginf(result.scores[row, expected.size :]).all()


@pytest.mark.parametrize(("layout", "backend"), [(CodeLayout.FLOAT32, "auto"), (CodeLayout.SIGN1, "numpy")])
def test_fetches_past_the_largest_k_stay_exact(layout: CodeLayout, backend: str) -> None:
    """A user who saw more items than a backend's largest k: the rest of the list comes from FAISS on the CPU."""
    rng = np.random.default_rng(9)
    dim, n_items = 16, MAX_K + 1500
    if layout is CodeLayout.FLOAT32:
        items, users = small_integer_floats(rng, n_items, dim), small_integer_floats(rng, 3, dim)
    else:
        items, users = encode_sign1(rng.standard_normal((n_items, dim))), encode_sign1(rng.standard_normal((3, dim)))
    exclude = [rng.choice(n_items, size=MAX_K + 100, replace=False).astype(np.int64) for _ in range(3)]
    index = ItemIndex.build(items, layout, dim, device="cpu", backend=backend)
    result = index.search(users, 50, exclude=exclude)
    for row, expected in enumerate(brute_force(users, items, layout, dim, 50, exclude)):
        np.testing.assert_array_equal(result.ids[row], expected)


def test_a_serialised_float_index_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(10)
    items = rng.standard_normal((200, 12)).astype(np.float32)
    index = ItemIndex.build(items, CodeLayout.FLOAT32, 12, device="cpu")
    path = tmp_path / "index.faiss"
    path.write_bytes(index.serialize())
    loaded = ItemIndex.load(path, layout=CodeLayout.FLOAT32, dim=12, device="cpu")
    loaded.self_check(items)
    got, want = loaded.search(items[:5], 10), index.search(items[:5], 10)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    with pytest.raises(ValueError, match="index has d=12, the bundle's codes need 16"):
        ItemIndex.load(path, layout=CodeLayout.FLOAT32, dim=16, device="cpu")


def test_an_index_without_items_answers_padded_rows() -> None:
    index = ItemIndex.build(np.zeros((0, 2), np.uint8), CodeLayout.SIGN1, 16, device="cpu")
    result = index.search(np.zeros((2, 2), np.uint8), 3)
    assert index.n_items == 0 and not index.on_gpu and (result.ids == -1).all()
    index.self_check(np.zeros((0, 2), np.uint8))


@pytest.mark.parametrize("forged", ["garbage", "one item changed", "items reordered"])
def test_a_stored_index_that_does_not_hold_the_bundles_items_is_refused(
    tmp_path: Path, ste_bundle: TrainedBundle, forged: str
) -> None:
    """Its checksum recomputed, a stored index holding anything but the bundle's items is refused before it serves:
    a self-check of a few items would pass most of these."""
    path = tmp_path / "copy"
    shutil.copytree(Bundle.load(ste_bundle.root).path, path)
    assert index_main(["build", "--bundle-root", str(path), "--device", "cpu"]) == 0
    bundle = Bundle.load(path)
    codes = np.array(bundle.item_codes)
    if forged == "one item changed":
        codes[len(codes) // 2, 0] ^= 1
    elif forged == "items reordered":
        codes = codes[::-1].copy()
    forged_index = ItemIndex.build(codes, bundle.layout, bundle.dim).serialize()
    forge(path, INDEX_FILE, b"not a faiss index" if forged == "garbage" else forged_index)
    with pytest.raises(BundleError, match=INDEX_FILE):
        ItemIndex.for_bundle(Bundle.load(path), device="cpu")


def test_a_bundles_item_codes_are_mapped_and_searched_where_they_lie(tmp_path: Path, ste_bundle: TrainedBundle) -> None:
    """Workers loading one bundle share its item codes through the page cache: the codes are a read-only map of the
    file, the numpy backend counts over them without a copy, and FAISS searches the stored index it checked."""
    path = tmp_path / "copy"
    shutil.copytree(Bundle.load(ste_bundle.root).path, path)
    assert index_main(["build", "--bundle-root", str(path), "--device", "cpu"]) == 0
    bundle = Bundle.load(path)
    assert isinstance(bundle.item_codes.base, np.memmap) and not bundle.item_codes.flags.writeable
    counting = ItemIndex.for_bundle(bundle, device="cpu", backend="numpy")
    assert isinstance(counting.retrieval, CountingBackend) and counting.item_codes is bundle.item_codes
    assert np.shares_memory(counting.retrieval.words, bundle.item_codes)
    faiss_cpu = ItemIndex.for_bundle(bundle, device="cpu", backend="faiss-cpu")
    assert isinstance(faiss_cpu.retrieval, FaissBinaryBackend) and faiss_cpu.retrieval.cpu_index is faiss_cpu._stored
    stored = (path / INDEX_FILE).read_bytes()
    assert counting.serialize() == faiss_cpu.serialize() == stored  # built from the codes, or the one read


def search_calls(index: ItemIndex, users: np.ndarray, k: int, exclude: list[np.ndarray], **options) -> list:
    """The backend calls one ``index.search`` makes, as (queries, fetch), and its answer."""
    calls = []
    steps = index._steps(users, k, exclude, options.get("query_scales"))
    try:
        fetch = next(steps)
        while True:
            calls.append((fetch[0].shape[0], fetch[1]))
            fetch = steps.send(index._search(*fetch))
    except StopIteration as done:
        return [calls, done.value]


def test_a_user_past_the_fast_path_is_searched_apart_from_the_rest_of_its_batch() -> None:
    """One call searches every query at its largest fetch: a user who saw more items than the GPU kernel's largest k
    would take every query of the batch onto the host's counting pass (minutes at 10M items). Such users get a call
    of their own; the others keep the fast path, and every answer stays exact."""
    rng = np.random.default_rng(12)
    dim, n_items = 16, MAX_K + 1500
    items, users = encode_sign1(rng.standard_normal((n_items, dim))), encode_sign1(rng.standard_normal((6, dim)))
    index = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="cpu", backend="torch")
    assert index.retrieval is not None and index.retrieval.fast_k == MAX_K < index.retrieval.max_k
    sizes = [5, MAX_K + 100, 0, 40, MAX_K + 7, 3]
    exclude = [rng.choice(n_items, size=size, replace=False).astype(np.int64) for size in sizes]
    calls, result = search_calls(index, users, 20, exclude)
    assert calls == [(4, 20 + 40), (2, 20 + MAX_K + 100)]
    for row, expected in enumerate(brute_force(users, items, CodeLayout.SIGN1, dim, 20, exclude)):
        np.testing.assert_array_equal(result.ids[row], expected)


def test_a_reranked_answer_does_not_depend_on_the_queries_searched_with_it() -> None:
    """With item scales each query re-ranks its own fetch of Hamming candidates (k × factor plus its seen items),
    not the largest fetch of its batch: searched alone or beside a user with many seen items, the same answer."""
    from tests.index.test_scales import scaled_codes

    rng = np.random.default_rng(13)
    items, item_scales, layout = scaled_codes(ScaleMode.LEVELS, 400, rng)
    users, user_scales, _ = scaled_codes(ScaleMode.LEVELS, 2, rng)
    index = ItemIndex.build(
        items, layout, 16, device="cpu", item_scales=item_scales, scale_mode=ScaleMode.LEVELS, rerank_factor=2,
        heavy_items=0,
    )  # fmt: skip
    exclude = [np.arange(3, dtype=np.int64), rng.choice(400, size=300, replace=False).astype(np.int64)]
    together = index.search(users, 5, exclude=exclude, query_scales=user_scales)
    alone = index.search(users[:1], 5, exclude=exclude[:1], query_scales=user_scales[:1])
    np.testing.assert_array_equal(together.ids[0], alone.ids[0])
    np.testing.assert_array_equal(together.scores[0], alone.scores[0])


def test_warm_up_reaches_the_fetch_of_the_bundles_most_seen_user(ste_bundle: TrainedBundle) -> None:
    """The widest fetch a request makes is k plus its user's seen items: the most-seen user sets the reach, never
    below WARM_MAX_FETCH nor past the kernel's largest k."""
    bundle = Bundle.load(ste_bundle.root)
    heaviest = int(max(len(bundle.seen_items(row)) for row in range(bundle.manifest.n_users)))
    assert 0 < heaviest < WARM_MAX_FETCH  # the tiny set: at k = 20 the floor holds
    assert warm_reach(bundle, 20) == WARM_MAX_FETCH
    assert warm_reach(bundle, WARM_MAX_FETCH) == WARM_MAX_FETCH + heaviest
    assert warm_reach(bundle, MAX_K) == MAX_K
