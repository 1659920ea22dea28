"""ItemIndex.warm: a GPU index meets every batch and fetch shape serving asks for before the first request."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.bundle import Bundle, resolve_bundle_path
from index.codes import CodeLayout, as_query, encode_sign1
from index.item_index import ItemIndex, warm_reach
from service.model import ModelLoader
from tests.conftest import TrainedBundle
from tests.index.test_bundle import forge, npz


def test_a_cpu_index_has_nothing_to_warm() -> None:
    items = encode_sign1(np.random.default_rng(0).standard_normal((500, 64)))
    assert ItemIndex.build(items, CodeLayout.SIGN1, 64, device="cpu").warm(64) == 0


@pytest.mark.parametrize(("layout", "user_layout"), [(CodeLayout.SIGN1, None), (CodeLayout.SIGN1, CodeLayout.PLANES2)])
def test_warm_up_searches_with_the_items_own_codes_spread_over_the_catalogue(
    layout: CodeLayout, user_layout: CodeLayout | None
) -> None:
    """Not all-zero codes, which can tie with every item of one popcount: warm-up searches meet what real ones do,
    and no key buffer overflows into a redo over the whole catalogue while a GPU server starts."""
    items = encode_sign1(np.random.default_rng(1).standard_normal((500, 64)))
    index = ItemIndex.build(items, layout, 64, device="cpu", user_layout=user_layout)
    queries = index.warm_queries(8)
    rows = np.linspace(0, 499, num=8).astype(np.int64)
    np.testing.assert_array_equal(queries, as_query(items[rows], layout, 64, user_layout or layout))
    top = index.search(queries, 1).ids[:, 0]
    np.testing.assert_array_equal(top, rows)  # each warm-up query is its item's own code


def cuda_and_triton() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_triton(), reason="needs CUDA and Triton")
@pytest.mark.parametrize(("max_batch", "searches"), [(64, 7 * 5), (100, 8 * 5)])
def test_after_warm_up_serving_shapes_capture_nothing_new_and_answer_exactly(max_batch: int, searches: int) -> None:
    """Batches 1..64 (and a batch_max_size of 100, captured at 128), k = 5 without seen items (captured at 16)
    and k = 20 with up to 200 seen (fetches to 220): every search replays a graph warm-up captured."""
    rng = np.random.default_rng(4)
    n_items, dim = 100_000, 256
    items = encode_sign1(rng.standard_normal((n_items, dim)))
    gpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="gpu", backend="triton")
    cpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="cpu", backend="faiss-cpu")
    assert gpu.warm(max_batch) == searches  # powers of two and max_batch, fetches 16..256
    captured = dict(gpu.retrieval._captured)  # type: ignore[union-attr]  # Triton answers every k itself
    for batch in sorted({1, 3, 37, 64, max_batch}):
        users = encode_sign1(rng.standard_normal((batch, dim)))
        exclude = [rng.choice(n_items, size=rng.integers(20, 200), replace=False) for _ in range(batch)]
        got, want = gpu.search(users, 20, exclude=exclude), cpu.search(users, 20, exclude=exclude)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(gpu.search(users, 5).ids, cpu.search(users, 5).ids)
    assert dict(gpu.retrieval._captured).keys() == captured.keys()  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_triton(), reason="needs CUDA and Triton")
def test_warming_to_the_kernels_largest_fetch_covers_users_with_thousands_of_seen_items() -> None:
    """RECSYS_WARM_MAX_FETCH=4096: a batch holding users who skip 1,000 and 2,500 seen items (searched at a fetch of
    2,520, captured at 4,096) meets a shape the warm-up captured, and answers as the CPU does."""
    rng = np.random.default_rng(5)
    n_items, dim = 100_000, 128
    items = encode_sign1(rng.standard_normal((n_items, dim)))
    gpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="gpu", backend="triton")
    cpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="cpu", backend="faiss-cpu")
    assert gpu.warm(4, max_fetch=4096) == 3 * 9  # batches 1, 2, 4; fetches 16..4096
    captured = dict(gpu.retrieval._captured)  # type: ignore[union-attr]
    users = encode_sign1(rng.standard_normal((3, dim)))
    exclude = [rng.choice(n_items, size=size, replace=False) for size in (1_000, 30, 2_500)]
    got, want = gpu.search(users, 20, exclude=exclude), cpu.search(users, 20, exclude=exclude)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert dict(gpu.retrieval._captured).keys() == captured.keys()  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_triton(), reason="needs CUDA")
def test_warm_up_stops_at_the_backends_fast_path() -> None:
    """FAISS GPU answers k up to 2,048 on the card and larger ones on the host: warming to 4,096 searches only up
    to 2,048, rather than scanning the catalogue on the CPU while the server starts."""
    from index.retrieval import available_backends

    if "faiss-gpu" not in available_backends():
        pytest.skip("needs FAISS built for the GPU")
    items = encode_sign1(np.random.default_rng(6).standard_normal((50_000, 64)))
    gpu = ItemIndex.build(items, CodeLayout.SIGN1, 64, device="gpu", backend="faiss-gpu")
    assert gpu.warm(4, max_fetch=4096) == 3 * 8  # batches 1, 2, 4; fetches 16..2048


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_triton(), reason="needs CUDA and Triton")
def test_a_bundles_most_seen_user_meets_a_shape_the_servers_warm_up_captured(
    tmp_path: Path, ste_bundle: TrainedBundle
) -> None:
    """The served reach comes from the bundle: a user who skips 350 of 400 items (a fetch of 370, captured at the
    whole catalogue), searched with light users, replays a graph the loader's warm-up captured (a reach of 256
    would not have) and answers as the CPU does."""
    root = tmp_path / "bundles"
    shutil.copytree(ste_bundle.root, root)
    path = resolve_bundle_path(root)
    bundle = Bundle.load(path)
    rows = [np.arange(350, dtype=np.int64)] + [bundle.seen_items(row) for row in range(1, bundle.manifest.n_users)]
    indptr = np.r_[0, np.cumsum([len(row) for row in rows])].astype(np.int64)
    forge(path, "seen.npz", npz(indptr=indptr, indices=np.concatenate(rows)))
    model = ModelLoader(bundle_root=root, device="gpu", backend="triton", warm_batch=4).load()
    assert warm_reach(model.bundle, 20) == 370
    captured = dict(model.index.retrieval._captured)  # type: ignore[union-attr]
    users = np.asarray(model.bundle.user_codes[:3])
    exclude = [model.bundle.seen_items(row) for row in range(3)]
    cpu = ItemIndex.for_bundle(model.bundle, device="cpu", backend="faiss-cpu")
    got, want = model.index.search(users, 20, exclude=exclude), cpu.search(users, 20, exclude=exclude)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert dict(model.index.retrieval._captured).keys() == captured.keys()  # type: ignore[union-attr]
