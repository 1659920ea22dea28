"""Every backend gives the numpy reference's ids and distances, ties by item id, on tie-heavy codes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
import torch

from index.hamming import hamming_distances
from index.retrieval import (
    MAX_K,
    HammingBackend,
    available_backends,
    make_backend,
    reference_topk,
    resolve_backend,
)
from index.retrieval.base import select_topk
from index.retrieval.by_batch import ByBatchBackend
from index.retrieval.counting_backend import CountingBackend
from index.retrieval.faiss_backend import FaissBinaryBackend
from index.retrieval.sharded import ShardedBackend, shard_bounds
from index.retrieval.torch_backend import TorchBackend, popcount64

CPU_BACKENDS: dict[str, Callable[[npt.NDArray[np.uint8]], HammingBackend]] = {
    "faiss-cpu": FaissBinaryBackend,
    "numpy": CountingBackend,
    "numpy-in-chunks": lambda codes: CountingBackend(codes, distance_budget=3 * codes.shape[0]),  # 3 queries a pass
    # The tests search 9 queries at once: the first answers them by counting, the second by FAISS.
    "by-batch-small": lambda codes: ByBatchBackend(CountingBackend(codes), FaissBinaryBackend(codes), 9),
    "by-batch-large": lambda codes: ByBatchBackend(CountingBackend(codes), FaissBinaryBackend(codes), 8),
    "torch-cpu": TorchBackend,
    "sharded-faiss": lambda codes: ShardedBackend(codes, 3, lambda part, _: FaissBinaryBackend(part)),
    "sharded-torch": lambda codes: ShardedBackend(codes, 2, lambda part, _: TorchBackend(part, tile_elements=4096)),
    "prebuilt-shards": lambda codes: ShardedBackend.from_shards(
        [FaissBinaryBackend(codes[a:b]) for a, b in shard_bounds(codes.shape[0], 4)]
    ),
}
HAS_TRITON = importlib.util.find_spec("triton") is not None


def codes(n: int, n_bytes: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (n, n_bytes), dtype=np.uint8)


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
@pytest.mark.parametrize(("n_bytes", "n_items"), [(1, 2500), (8, 1800), (72, 700)])
@pytest.mark.parametrize("k", [1, 17, 100, 1800])
def test_backends_match_the_reference(backend: str, n_bytes: int, n_items: int, k: int) -> None:
    items, queries = codes(n_items, n_bytes), codes(9, n_bytes, seed=1)
    index = CPU_BACKENDS[backend](items)
    got = index.search(queries, k)
    want = reference_topk(queries, items, min(k, n_items))
    assert np.array_equal(got.ids[:, : want.ids.shape[1]], want.ids)
    assert np.array_equal(got.distances[:, : want.ids.shape[1]], want.distances)
    assert (got.ids[:, want.ids.shape[1] :] == -1).all()  # k beyond the catalogue: padded, not invented


def test_a_by_batch_backend_routes_batches_by_size_and_refuses_two_catalogues() -> None:
    items = codes(500, 8)
    both = ByBatchBackend(CountingBackend(items), FaissBinaryBackend(items), 4)
    assert both.name == "numpy+faiss-cpu" and both.memory_bytes == 2 * items.nbytes
    answered: list[str] = []
    for part in (both.small, both.large):
        search = part._search
        part._search = lambda q, k, search=search, name=part.name: answered.append(name) or search(q, k)  # type: ignore[method-assign]
    for n_queries in (4, 5):
        queries = codes(n_queries, 8, seed=n_queries)
        assert np.array_equal(both.search(queries, 30).ids, reference_topk(queries, items, 30).ids)
    assert answered == ["numpy", "faiss-cpu"]  # 4 queries by counting, 5 by FAISS
    with pytest.raises(ValueError, match="same catalogue"):
        ByBatchBackend(CountingBackend(items), FaissBinaryBackend(items[:400]), 4)


def test_reference_breaks_ties_by_item_id() -> None:
    items = np.array([[0b1111], [0b0001], [0b0011], [0b0001], [0b0000]], dtype=np.uint8)
    found = reference_topk(np.array([[0b0001]], dtype=np.uint8), items, 5)
    assert found.ids.tolist() == [[1, 3, 2, 4, 0]] and found.distances.tolist() == [[0, 0, 1, 1, 3]]


@pytest.mark.parametrize("id_scale", [10**6, 2**50])  # ids that pack into one int64 key, and ids that do not
def test_select_topk_orders_by_distance_then_id_with_padding_last(id_scale: int) -> None:
    rng = np.random.default_rng(7)
    distances = rng.integers(0, 12, (50, 40)).astype(np.int32)
    ids = rng.choice(id_scale, (50, 40), replace=False).astype(np.int64)
    ids[:, ::7] = -1  # padded slots tie with real items at their distance and must come after them
    for k in (1, 10, 40):
        found = select_topk(distances, ids, k)
        for row in range(50):
            last = np.where(ids[row] >= 0, ids[row], np.iinfo(np.int64).max)
            pairs = sorted(zip(distances[row], last, strict=True))[:k]
            assert found.distances[row].tolist() == [int(d) for d, _ in pairs]
            assert found.ids[row].tolist() == [int(i) if i != np.iinfo(np.int64).max else -1 for _, i in pairs]


def test_popcount64_counts_every_bit_including_the_sign() -> None:
    values = torch.tensor([0, 1, -1, -(2**63), 2**63 - 1, 0x5555555555555555], dtype=torch.int64)
    assert popcount64(values).tolist() == [0, 1, 64, 1, 63, 32]


def test_hamming_matrix_counts_differing_bits() -> None:
    assert hamming_distances(np.array([[0xFF, 0]], np.uint8), np.array([[0, 0], [0xF0, 1]], np.uint8)).tolist() == [
        [8, 5]
    ]


def test_shards_cover_the_catalogue_without_overlap() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]  # more shards than items: empty ones are dropped


@pytest.mark.parametrize(
    ("k", "shape", "message"), [(0, (2, 8), "k must be"), (MAX_K + 1, (2, 8), "k must be"), (5, (2, 7), r"\[n, 8\]")]
)
def test_bad_requests_are_refused(k: int, shape: tuple[int, int], message: str) -> None:
    index = FaissBinaryBackend(codes(50, 8))
    with pytest.raises(ValueError, match=message):
        index.search(np.zeros(shape, np.uint8), k)


def test_auto_picks_the_cpu_backend_measured_fastest_for_the_catalogue_and_refuses_gpu_backends() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert make_backend(codes(10, 8)).name == "numpy"  # few items, narrow codes: one counting pass
    assert make_backend(codes(10, 32)).name == "faiss-cpu"  # 256-bit codes: FAISS's SIMD popcount
    assert resolve_backend("auto", "cpu", (1_000_000, 8)) == "numpy+faiss-cpu"  # millions of 64-bit codes
    assert make_backend(codes(300_000, 8)).name == "numpy+faiss-cpu"
    assert resolve_backend("auto", "cpu", (1_000_000, 16)) == "faiss-cpu"  # millions of 128-bit codes
    assert resolve_backend("auto", "cpu", (5_000_000, 8)) == "faiss-cpu"
    assert resolve_backend("auto", "cpu", (200_000, 16)) == "numpy"
    assert resolve_backend("auto", "cpu") == "faiss-cpu"  # catalogue unknown
    with pytest.raises(RuntimeError, match="needs a GPU"):
        make_backend(codes(10, 8), "triton")
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        make_backend(codes(10, 8), "annoy")


def test_without_torch_the_cpu_backends_still_resolve_and_build() -> None:
    # The api image has no torch: `None` in sys.modules makes its import fail as an absent package's does.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from index.retrieval import available_backends, make_backend
        found = available_backends()
        assert "torch" not in found and "triton" not in found, found
        assert make_backend(np.zeros((10, 8), np.uint8)).name == "numpy"
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


TRITON_CHECK = textwrap.dedent(
    """
    import numpy as np
    from index.retrieval import reference_topk
    from index.retrieval.triton_backend import TritonBackend
    rng = np.random.default_rng(0)
    for n_bytes, n, k in [(8, 700, 5), (24, 400, 20), (32, 500, 50), (72, 300, 300), (4, 600, 1)]:
        items = rng.integers(0, 256, (n, n_bytes), dtype=np.uint8)
        queries = rng.integers(0, 256, (3, n_bytes), dtype=np.uint8)
        got, want = TritonBackend(items, device="cpu").search(queries, k), reference_topk(queries, items, k)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), (n_bytes, k)
    # The sample keeps each group's nearest (sample_group: 16 items per group at k = 1, 8 at k = 2 for 562
    # sampled of 9,000): its bounds are the k-th of those minima, and the search stays exact.
    import torch
    from index.retrieval.chunking import plan_chunks, sample_group
    from index.retrieval.triton_backend import word_major
    items = rng.integers(0, 256, (9000, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    backend = TritonBackend(items, device="cpu")
    for k, group in ((1, 16), (2, 8)):
        n_sample = plan_chunks(9000, 4, k).n_sample
        assert n_sample == 562 and sample_group(n_sample, k) == group
        sampled = items[backend.sample_rows[:n_sample]]
        sampled = np.unpackbits(queries[:, None, :] ^ sampled[None, :, :], axis=2).sum(axis=2)
        minima = np.stack([sampled[:, s : s + group].min(axis=1) for s in range(0, n_sample, group)], axis=1)
        _, safe = backend.bounds(torch.from_numpy(word_major(queries)), k, n_sample)
        assert safe.tolist() == np.sort(minima, axis=1)[:, k - 1].tolist(), (k, group)
        got, want = backend.search(queries, k), reference_topk(queries, items, k)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), ("group", k)
    # Every item ties: the sampled bound lets all 3000 through, past the key buffer -> the overflow redo.
    tied = TritonBackend(np.zeros((3000, 8), np.uint8), device="cpu").search(np.full((2, 8), 255, np.uint8), 3)
    assert tied.ids.tolist() == [[0, 1, 2]] * 2 and tied.distances.tolist() == [[64] * 3] * 2
    # Codes handed over already word-major (as a GPU-generated catalogue is), in two prebuilt shards.
    import torch
    from index.retrieval.sharded import ShardedBackend
    from index.retrieval.triton_backend import word_major
    items = rng.integers(0, 256, (900, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (4, 32), dtype=np.uint8)
    halves = [
        TritonBackend.from_word_major(torch.from_numpy(word_major(part)), 32) for part in (items[:400], items[400:])
    ]
    merged = ShardedBackend.from_shards(halves, parallel=False)  # the interpreter is not thread-safe
    got, want = merged.search(queries, 60), reference_topk(queries, items, 60)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances)
    # Any tile shape gives the same answer (benchmarks/triton_tiles.py sweeps them for speed).
    from index.retrieval.triton_backend import Tiles
    for tiles in (Tiles(16, 64, 4), Tiles(64, 32, 8), Tiles(16, 32, 4, mma=True), Tiles(64, 64, 4, mma=False)):
        got = TritonBackend(items, device="cpu", tiles=tiles).search(queries, 30)
        want = reference_topk(queries, items, 30)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), tiles
    # Batches of MMA_MIN_QUERIES or more take the tensor-core kernels: 64-, 256- and 576-bit codes, ragged tiles.
    from index.retrieval.triton_backend import MMA_MIN_QUERIES
    # (A few queries with the MMA kernels forced for the wider codes: the interpreter is slow.)
    for n_bytes, n, k, n_queries in [(8, 700, 5, MMA_MIN_QUERIES + 3), (32, 500, 50, 3), (72, 300, 300, 3)]:
        items = rng.integers(0, 256, (n, n_bytes), dtype=np.uint8)
        queries = rng.integers(0, 256, (n_queries, n_bytes), dtype=np.uint8)
        tiles = None if n_queries >= MMA_MIN_QUERIES else Tiles(16, 64, 4, mma=True)
        got = TritonBackend(items, device="cpu", tiles=tiles).search(queries, k)
        want = reference_topk(queries, items, k)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), ("mma", n_bytes)
    tied = TritonBackend(np.zeros((600, 8), np.uint8), device="cpu").search(np.full((40, 8), 255, np.uint8), 3)
    assert tied.ids.tolist() == [[0, 1, 2]] * 40 and tied.distances.tolist() == [[64] * 3] * 40
    # Small tiles: words of 32 flagged tiles, programs of 16 words, and a list that spills (the redo): every tile
    # of 1,600 tied items is flagged, 4 words per query, with room for 1.
    import index.retrieval.triton_backend as triton_backend
    triton_backend.GATHER_ROOM = 1024
    small = TritonBackend(np.zeros((1600, 8), np.uint8), device="cpu", tiles=Tiles(16, 16, 4, mma=True))
    tied = small.search(np.full((3, 8), 255, np.uint8), 3)
    triton_backend.GATHER_ROOM = 2
    assert tied.ids.tolist() == [[0, 1, 2]] * 3 and tied.distances.tolist() == [[64] * 3] * 3
    items = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    got = TritonBackend(items, device="cpu", tiles=Tiles(16, 16, 4, mma=True)).search(queries, 200)
    want = reference_topk(queries, items, 200)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), "small tiles"
    # Several query blocks (40 queries, blocks of 16): the signs are loaded per block, not held.
    items = rng.integers(0, 256, (700, 12), dtype=np.uint8)
    queries = rng.integers(0, 256, (40, 12), dtype=np.uint8)
    got = TritonBackend(items, device="cpu", tiles=Tiles(16, 64, 4, mma=True)).search(queries, 40)
    want = reference_topk(queries, items, 40)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), "query blocks"
    # A tight bound that lets fewer than k items through: those queries are redone within the safe bound.
    import index.retrieval.chunking as chunking
    chunking.TIGHT_TAIL, chunking.TIGHT_MIN_RANK = 1.0, 1  # the tight bound is each query's nearest sampled item
    chunking.tight_rank.cache_clear()  # it caches per shape
    items = rng.integers(0, 256, (3200, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    redone = []  # queries each search redid: the checks below must take that path
    redo = TritonBackend._redo
    TritonBackend._redo = lambda self, chunk, k: redone.append(int(chunk.redo.sum())) or redo(self, chunk, k)
    for tiles in (None, Tiles(16, 64, 4, mma=True)):
        got = TritonBackend(items, device="cpu", tiles=tiles).search(queries, 20)
        want = reference_topk(queries, items, 20)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), ("tight", tiles)
    # … and while the flag list spills: the redo must still switch those queries to their safe bound.
    triton_backend.GATHER_ROOM = 4096
    got = TritonBackend(items, device="cpu", tiles=Tiles(16, 64, 4, mma=True)).search(queries, 20)
    want = reference_topk(queries, items, 20)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), "tight and spilled"
    assert len(redone) == 3 and min(redone) >= 1, redone
    print("triton kernels agree")
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (the `gpu` extra)")
def test_triton_kernels_match_the_reference_in_the_interpreter() -> None:
    assert "triton kernels agree" in run_interpreted(TRITON_CHECK)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (the `gpu` extra)")
def test_triton_answers_a_k_past_its_kernel_from_its_own_codes() -> None:
    """A user with more seen items than the kernel's buffers take: the Triton backend answers that k itself, with
    the codes it holds on the device (exact, ties by id), so no host pass over the catalogue sits behind it; callers
    merging searches still keep such searches apart (``fast_k``)."""
    script = """
        import numpy as np
        import index.retrieval.triton_backend as triton_backend
        from index.retrieval import MAX_K, reference_topk
        from index.retrieval.triton_backend import TritonBackend
        triton_backend.ANY_K_TILE = 3000  # slices of 1,024 items: the running top-k is merged across them
        rng = np.random.default_rng(5)
        for n_bytes in (8, 6):  # whole 32-bit words, and a padded last word
            items = rng.integers(0, 256, (MAX_K + 900, n_bytes), dtype=np.uint8)
            items[MAX_K :] = items[0]  # ties across the slices the pass scores
            queries = rng.integers(0, 256, (3, n_bytes), dtype=np.uint8)
            backend = TritonBackend(items, device="cpu")
            assert (backend.fast_k, backend.max_k) == (MAX_K, MAX_K + 900)
            for k in (MAX_K + 1, MAX_K + 900):
                got, want = backend.search(queries, k), reference_topk(queries, items, k)
                assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), k
        print("any k agrees")
    """
    assert "any k agrees" in run_interpreted(textwrap.dedent(script))


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (the `gpu` extra)")
def test_triton_bounds_stay_tight_on_a_catalogue_numbered_by_cluster() -> None:
    """Items numbered cluster by cluster (by category, by when they were added): the threshold pass's sample
    must not be the first cluster, whose distances would admit a whole catalogue's worth of keys into every query's
    buffer and redo every search. Queries from the last cluster: no search is redone, and the answers are exact."""
    script = """
        import numpy as np
        from index.retrieval import reference_topk
        from index.retrieval.triton_backend import Tiles, TritonBackend
        rng = np.random.default_rng(3)
        centres = rng.integers(0, 2, (4, 64), dtype=np.uint8)
        cluster = np.repeat(np.arange(4), 2000)  # ids in cluster order
        items = np.packbits(centres[cluster] ^ (rng.random((8000, 64)) < 0.1), axis=1)
        queries = np.packbits(centres[[3] * 3] ^ (rng.random((3, 64)) < 0.1), axis=1)
        redone = []
        redo = TritonBackend._redo
        TritonBackend._redo = lambda self, chunk, k: redone.append(int(chunk.redo.sum())) or redo(self, chunk, k)
        for tiles in (None, Tiles(16, 64, 4, mma=True)):
            got = TritonBackend(items, device="cpu", tiles=tiles).search(queries, 5)
            want = reference_topk(queries, items, 5)
            assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), tiles
        assert redone == [], redone
        print("bounds stay tight")
    """
    assert "bounds stay tight" in run_interpreted(textwrap.dedent(script))


def run_interpreted(script: str) -> str:
    """Run ``script`` in a fresh interpreter under Triton's CPU interpreter (it must be set before Triton is
    imported); fail on a non-zero exit, return its output."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and Triton")
@pytest.mark.parametrize("n_bytes", [8, 32, 72])
def test_gpu_backends_match_the_reference(n_bytes: int) -> None:
    items, queries = codes(200_000, n_bytes), codes(70, n_bytes, seed=1)
    want = reference_topk(queries, items, 100)
    for name in ("triton", "torch", "faiss-gpu"):
        if name == "faiss-gpu" and name not in available_backends():
            continue
        got = make_backend(items, name).search(queries, 100)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), name
    sharded = make_backend(items, "triton", shards=3).search(queries, 100)
    assert np.array_equal(sharded.ids, want.ids)
    if torch.cuda.device_count() > 1:  # one shard per GPU, searched from one thread each
        spread = make_backend(items, "triton")
        assert isinstance(spread, ShardedBackend)
        assert {shard.device.index for shard in spread.shards} == set(range(torch.cuda.device_count()))  # type: ignore[attr-defined]
        got = spread.search(queries, 100)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and Triton")
def test_triton_searches_replayed_as_cuda_graphs_stay_exact() -> None:
    from index.retrieval.triton_backend import TritonBackend

    items = codes(300_000, 32)
    graphed, plain = TritonBackend(items), TritonBackend(items, graphs=False)
    # Popcount searches (under 32 queries) and tensor-core ones (33 pads to 64, 100 to 128, 1000 to 1024).
    shapes = [(1, 1), (1, 100), (3, 10), (5, 257), (16, 100), (16, 1000), (33, 10), (64, 100), (100, 100), (1000, 100)]
    for n_queries, k in shapes:
        queries = codes(n_queries, 32, seed=n_queries + k)
        want = reference_topk(queries, items, k)
        for backend in (graphed, graphed, plain):  # the second graphed call replays the captured graph
            got = backend.search(queries, k)
            assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), (n_queries, k)
    captured = graphed._captured
    assert None not in captured.values() and (128, 128) in captured and (1024, 128) in captured
    # All graphs share one memory pool: replaying them in another order must not see each other's scratch.
    for n_queries, k in reversed(shapes):
        queries = codes(n_queries, 32, seed=n_queries + k)
        got, want = graphed.search(queries, k), reference_topk(queries, items, k)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), ("again", n_queries)
    # Every item ties: the replayed search overflows its key buffer and is redone outside the graph.
    tied = TritonBackend(np.zeros((50_000, 8), np.uint8))
    for n_queries in (2, 2, 64, 64):
        found = tied.search(np.full((n_queries, 8), 255, np.uint8), 5)
        assert found.ids.tolist() == [[0, 1, 2, 3, 4]] * n_queries and (found.distances == 64).all()
    # Threads share one backend, mixing shapes: each search holds the graphs' shared buffers alone.
    sizes = [2, 100, 1000, 40]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda seed: graphed.search(codes(sizes[seed % 4], 32, seed=seed), 50), range(16)))
    for seed, got in enumerate(answers):
        assert np.array_equal(got.ids, reference_topk(codes(sizes[seed % 4], 32, seed=seed), items, 50).ids), seed


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
def test_every_backend_knows_its_name_device_and_largest_k(backend: str) -> None:
    index = CPU_BACKENDS[backend](codes(300, 8))
    assert index.name and not index.on_gpu and index.max_k >= MAX_K
    message = re.escape(f"k must be in 1..{index.max_k} (the largest k the {index.name} backend answers)")
    with pytest.raises(ValueError, match=message):
        index.search(codes(2, 8), index.max_k + 1)


@pytest.mark.parametrize(
    ("device", "backend"),
    [("gpu", "numpy"), ("gpu", "faiss-cpu"), ("gpu", "numpy+faiss-cpu"), ("cpu", "triton"), ("cpu", "faiss-gpu")],
)
def test_a_backend_that_cannot_search_on_the_device_asked_for_is_refused(device: str, backend: str) -> None:
    """Not silently searched elsewhere: a GPU asked for and a CPU backend named (or the other way) is a ValueError
    naming the backends that fit, before any index is built."""
    with pytest.raises(ValueError, match=re.escape(f"the {backend} backend cannot search on the {device.upper()}")):
        resolve_backend(backend, device)  # type: ignore[arg-type]
