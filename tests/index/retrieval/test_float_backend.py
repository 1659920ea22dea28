"""The float backend (FAISS inner product) meets the common contract: exact order against numpy, its k limits,
and ``backend_for_index`` hands every stored index its backend."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from index.retrieval import (
    BACKENDS,
    GPU_BACKENDS,
    MAX_K,
    available_backends,
    backend_for_index,
    reference_topk,
    stored_index,
)
from index.retrieval.by_k import ByKBackend
from index.retrieval.counting_backend import CountingBackend
from index.retrieval.faiss_backend import FaissBinaryBackend, FaissFloatBackend
from index.retrieval.torch_backend import TorchBackend


def vectors(n: int, dim: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Small integers as floats: inner products are exact in any summation order (BLAS or not), and tie a lot."""
    return np.random.default_rng(seed).integers(-3, 4, (n, dim)).astype(np.float32)


def reference(queries: npt.NDArray[np.float32], items: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Ids by inner product descending, then id ascending: numpy's exact answer."""
    scores = queries @ items.T
    return np.stack([np.lexsort((np.arange(items.shape[0]), -row))[:k] for row in scores])


@pytest.mark.parametrize("n_queries", [3, 40])  # FAISS scores few queries one by one and more with BLAS
@pytest.mark.parametrize("k", [1, 17, 100, 700])
def test_float_backend_matches_the_reference_with_ties_by_id(n_queries: int, k: int) -> None:
    items, queries = vectors(700, 16), vectors(n_queries, 16, seed=1)
    backend = FaissFloatBackend(items)
    found = backend.search(queries, k)
    np.testing.assert_array_equal(found.ids, reference(queries, items, k))
    scores = np.take_along_axis(queries @ items.T, found.ids, axis=1)
    np.testing.assert_array_equal(-found.distances, scores)
    assert found.distances.dtype == np.float32 and np.all(np.diff(found.distances, axis=1) >= 0)


def test_float_backend_knows_its_name_device_and_largest_k() -> None:
    items = vectors(300, 8)
    backend = FaissFloatBackend(items)
    assert (backend.name, backend.on_gpu, backend.width) == ("faiss-float-cpu", False, 8)
    assert backend.max_k == MAX_K  # FAISS ranks any k; at least MAX_K, as every backend
    assert FaissFloatBackend(vectors(MAX_K + 10, 8)).max_k == MAX_K + 10  # … and the whole catalogue beyond
    assert backend.memory_bytes == items.nbytes


def test_float_backend_pads_past_the_catalogue_and_refuses_bad_requests() -> None:
    items, queries = vectors(50, 8), vectors(2, 8, seed=1)
    backend = FaissFloatBackend(items)
    found = backend.search(queries, 60)
    assert (found.ids[:, 50:] == -1).all() and np.isinf(found.distances[:, 50:]).all()
    assert sorted(found.ids[0, :50]) == list(range(50))
    assert backend.search(np.empty((0, 8), np.float32), 5).ids.shape == (0, 5)
    with pytest.raises(ValueError, match=rf"k must be in 1..{MAX_K} \(the largest k the faiss-float-cpu backend"):
        backend.search(queries, MAX_K + 1)
    with pytest.raises(ValueError, match="k must be in 1.."):
        backend.search(queries, 0)
    with pytest.raises(ValueError, match=r"queries must be \[n, 8\] float32"):
        backend.search(np.zeros((2, 7), np.float32), 5)
    with pytest.raises(ValueError, match="non-empty"):
        FaissFloatBackend(np.zeros((0, 8), np.float32))


def test_a_bounded_backend_refuses_k_past_its_largest_and_by_k_routes_those_to_the_counting_pass() -> None:
    items = np.random.default_rng(0).integers(0, 256, (MAX_K + 500, 2), dtype=np.uint8)
    queries = items[:3]
    bounded = TorchBackend(items)
    with pytest.raises(ValueError, match=rf"k must be in 1..{MAX_K} \(the largest k the torch-cpu backend"):
        bounded.search(queries, MAX_K + 1)
    assert CountingBackend(items).max_k == MAX_K + 500  # one pass whatever k: it ranks every item
    both = ByKBackend(bounded, CountingBackend(items))
    assert (both.name, both.max_k, both.on_gpu) == ("torch-cpu", MAX_K + 500, False)
    for k in (20, MAX_K + 200):
        found = both.search(queries, k)
        want = reference_topk(queries, items, k)
        assert np.array_equal(found.ids, want.ids) and np.array_equal(found.distances, want.distances)
    with pytest.raises(ValueError, match="same catalogue"):
        ByKBackend(bounded, FaissBinaryBackend(items[:10]))


def test_backend_for_index_gives_floats_faiss_and_codes_the_named_backend() -> None:
    floats = backend_for_index(stored_index(vectors(100, 8)), "triton", device="cpu")  # code backends: not for floats
    assert isinstance(floats, FaissFloatBackend) and floats.name == "faiss-float-cpu"
    codes = np.random.default_rng(0).integers(0, 256, (MAX_K + 1, 4), dtype=np.uint8)
    counting = backend_for_index(stored_index(codes), "numpy", device="cpu")
    assert isinstance(counting, CountingBackend) and counting.max_k >= counting.n_items  # ranks any k itself
    bounded = backend_for_index(stored_index(codes), "torch", device="cpu")
    assert isinstance(bounded, ByKBackend) and bounded.name == "torch-cpu"
    assert isinstance(bounded.any_k, CountingBackend)  # past the torch backend's largest k: the counting pass
    faiss_cpu = backend_for_index(stored_index(codes), "faiss-cpu", device="cpu")
    assert isinstance(faiss_cpu, FaissBinaryBackend)  # ranks any k itself
    assert backend_for_index(stored_index(np.zeros((0, 4), np.uint8)), device="cpu") is None
    assert backend_for_index(stored_index(np.zeros((0, 8), np.float32)), device="cpu") is None
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        backend_for_index(stored_index(codes), "annoy", device="cpu")


def test_backend_names_are_one_list() -> None:
    assert BACKENDS[0] == "auto" and len(set(BACKENDS)) == len(BACKENDS)
    assert set(GPU_BACKENDS) <= set(BACKENDS) and set(available_backends()) <= set(BACKENDS)
