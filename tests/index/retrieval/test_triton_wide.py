"""Wide codes on the Triton backend: the tensor-core scan's tiles fit the GPU's shared memory, and every width
the index accepts is searched exactly (smaller tiles, then popcounts where no tile fits)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (the `gpu` extra)")

from index.retrieval.chunking import FLAG_BUDGET, FLAG_TILE, MAX_CHUNK, flag_bytes, plan_chunks  # noqa: E402
from index.retrieval.faiss_backend import FaissBinaryBackend  # noqa: E402
from index.retrieval.triton_backend import (  # noqa: E402
    Tiles,
    TritonBackend,
    scan_shared_bytes,
    scan_tiles,
)
from tests.index.retrieval.test_backends import codes, run_interpreted  # noqa: E402

H200_SHARED = 232_448  # shared memory a block may opt in to on an H100/H200 (Triton's "Hardware limit")
A100_SHARED = 166_912
BATCHES = (1, 32, 33, 64, 100, 1024, MAX_CHUNK)


def words(bits: int) -> int:
    return -(-bits // 32)


@pytest.mark.parametrize("bits", [8, 64, 128, 256, 512, 576, 600, 640])
@pytest.mark.parametrize("n_queries", BATCHES)
def test_codes_up_to_640_bits_keep_the_tuned_scan_tiles(bits: int, n_queries: int) -> None:
    # What the scan ran before tiles were fitted to shared memory: 64 × 128, the query block cut to the batch.
    block_q = max(16, min(64, 1 << (n_queries - 1).bit_length()))
    assert scan_tiles(words(bits), n_queries, H200_SHARED)[0] == Tiles(block_q, FLAG_TILE, 4, mma=True)
    assert scan_tiles(words(bits), n_queries, None)[0] == Tiles(block_q, FLAG_TILE, 4, mma=True)  # the interpreter
    # An A100 (mma.sync: two buffers of signs, 166,912 bytes) keeps them too.
    on_a100 = scan_tiles(words(bits), n_queries, A100_SHARED, async_dot=False)[0]
    assert on_a100 == Tiles(block_q, FLAG_TILE, 4, mma=True)


@pytest.mark.parametrize("bits", [672, 768, 1024, 1152, 1536, 2048, 2304, 3072, 4096, 4608])
@pytest.mark.parametrize("n_queries", BATCHES)
@pytest.mark.parametrize(("shared", "async_dot"), [(H200_SHARED, True), (A100_SHARED, False)])
def test_wider_codes_get_scan_tiles_that_fit(bits: int, n_queries: int, shared: int, async_dot: bool) -> None:
    found = scan_tiles(words(bits), n_queries, shared, async_dot=async_dot)
    if shared == H200_SHARED:
        assert found, "every width up to 4,608 bits has a tile on an H200"
    for tiles in found:
        need = scan_shared_bytes(words(bits), tiles.block_q, tiles.block_n, n_queries <= tiles.block_q, async_dot)
        assert need <= shared and need <= scan_shared_bytes(words(bits), tiles.block_q, tiles.block_n)
        assert tiles.block_q <= max(16, 1 << (n_queries - 1).bit_length()) and tiles.warps == 4 and tiles.mma
    assert len(set(found)) == len(found)


@pytest.mark.parametrize(
    ("bits", "n_queries", "block_q", "block_n"),
    [
        (768, 1024, 32, 128),  # 64 × 128 needed 246,016 bytes on the H200
        (768, 64, 64, 128),  # one block of queries: its signs are loaded once, 147,712 bytes
        (1152, 1024, 32, 128),
        (1536, 1024, 32, 64),
        (2304, 1024, 16, 64),
        (2304, 64, 16, 64),
        (4096, 1024, 16, 16),
        (4608, 64, 16, 16),
    ],
)
def test_the_largest_tiles_that_fit_come_first(bits: int, n_queries: int, block_q: int, block_n: int) -> None:
    assert scan_tiles(words(bits), n_queries, H200_SHARED)[0] == Tiles(block_q, block_n, 4, mma=True)


def test_the_estimate_covers_what_the_h200_reported_and_gives_up_past_the_smallest_tile() -> None:
    # 64 × 128 at 640 bits: 205,056 bytes compiled (Triton 3.9, sm_90); at 768 bits the H200 needed 246,016.
    assert 205_056 <= scan_shared_bytes(words(640), 64, 128) <= H200_SHARED
    assert scan_shared_bytes(words(768), 64, 128) >= 246_016 > H200_SHARED
    assert scan_shared_bytes(words(2304), 64, 128) >= 737_536  # the other crash: 2,304-bit codes
    assert scan_tiles(words(4640), MAX_CHUNK, H200_SHARED) == []  # 145 words scan as 128 + 32: collected by popcounts
    assert scan_tiles(words(8192), 1024, H200_SHARED) == []
    # Given tiles come first when they fit, and shrink from there when they do not.
    given = Tiles(32, 64, 8, mma=True)
    assert scan_tiles(words(256), 1024, H200_SHARED, given)[:2] == [given, Tiles(16, 64, 8, mma=True)]
    assert scan_tiles(words(4096), 1024, H200_SHARED, given) == [Tiles(16, 16, 8, mma=True)]


def test_smaller_scan_tiles_get_a_longer_bitmap_row_within_the_same_budget() -> None:
    assert plan_chunks(10**9, MAX_CHUNK, 100) == plan_chunks(10**9, MAX_CHUNK, 100, FLAG_TILE)
    for flag_tile in (64, 32, 16):
        plan = plan_chunks(10**9, MAX_CHUNK, 1, flag_tile)
        assert plan.queries * flag_bytes(10**9, flag_tile) <= FLAG_BUDGET
        assert plan.queries < plan_chunks(10**9, MAX_CHUNK, 1).queries


WIDE_CHECK = textwrap.dedent(
    """
    import logging
    import numpy as np
    from triton.runtime.errors import OutOfResources
    import index.retrieval.triton_backend as triton_backend
    from index.retrieval import reference_topk
    from index.retrieval.triton_backend import Tiles, TritonBackend, scan_shared_bytes

    warnings = []


    class Recorded(logging.Handler):
        def emit(self, record):
            warnings.append(record)


    logging.getLogger(triton_backend.__name__).addHandler(Recorded())
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (300, 100), dtype=np.uint8)  # 800 bits: 25 words, scanned as 16 + 16
    queries = rng.integers(0, 256, (40, 100), dtype=np.uint8)  # over MMA_MIN_QUERIES: the tensor-core scan
    want = reference_topk(queries, items, 10)
    scan = triton_backend._mma_scan_kernel


    class Scans:
        \"\"\"Stands in for the scan kernel: records each launch's (BLOCK_Q, BLOCK_N), and raises Triton's
        OutOfResources (before launching, as Triton does) for tiles of more than ``most_items`` items.\"\"\"

        def __init__(self, most_items=None):
            self.most_items, self.launched = most_items, []

        def __getitem__(self, grid):
            def launch(*args, **constexprs):
                self.launched.append((constexprs["BLOCK_Q"], constexprs["BLOCK_N"]))
                if self.most_items is not None and constexprs["BLOCK_N"] > self.most_items:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return scan[grid](*args, **constexprs)
            return launch


    def searched(backend, scans, label):
        triton_backend._mma_scan_kernel = scans
        try:
            got = backend.search(queries, 10)
        finally:
            triton_backend._mma_scan_kernel = scan
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), label
        launched, scans.launched = scans.launched, []
        return launched


    # A device whose shared memory holds the 40 queries' block against 64 items of these codes, not 128.
    backend = TritonBackend(items, device="cpu")
    assert backend._flag_tile() == 128
    backend.shared_limit = scan_shared_bytes(25, 64, 64, one_block=True)
    assert backend._flag_tile() == 64  # a full chunk's tiles: the plan budgets the longer bitmap
    assert searched(backend, Scans(), "smaller tiles") == [(64, 64)]
    # No tile fits: the popcount kernel collects, and the scan is never launched.
    backend.shared_limit = 0
    assert backend._flag_tile() == 128
    assert searched(backend, Scans(), "popcounts") == []
    # The estimate let tiles through that the device refuses: smaller ones are tried, each refusal logged once
    # and remembered (the next search goes straight to the tiles that ran).
    backend = TritonBackend(items, device="cpu")
    refused = [(64, 128), (32, 128), (16, 128), (64, 64), (32, 64), (16, 64)]
    assert searched(backend, Scans(most_items=32), "refused tiles") == [*refused, (64, 32)]
    assert len(warnings) == 6 and all("does not fit" in record.getMessage() for record in warnings)
    assert searched(backend, Scans(most_items=32), "refused tiles, again") == [(64, 32)]
    assert len(warnings) == 6
    # Every tile refused: popcounts, from then on without trying the scan.
    backend = TritonBackend(items, device="cpu", tiles=Tiles(16, 32, 4, mma=True))
    assert searched(backend, Scans(most_items=0), "all refused") == [(16, 32), (16, 16)]
    assert searched(backend, Scans(most_items=0), "all refused, again") == []
    print("wide codes agree")
    """
)


def test_wide_codes_fall_back_to_tiles_that_fit_in_the_interpreter() -> None:
    assert "wide codes agree" in run_interpreted(WIDE_CHECK)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", [768, 1152, 2304, 4096])
def test_wide_codes_are_searched_exactly_on_the_gpu(bits: int) -> None:
    items = codes(200_000, bits // 8)
    reference = FaissBinaryBackend(items)
    graphed, eager = TritonBackend(items), TritonBackend(items, graphs=False)
    for batch in (1, 64, 1024):
        queries = codes(batch, bits // 8, seed=batch)
        want = reference.search(queries, 100)
        for backend in (graphed, graphed, eager):  # the second graphed search replays the captured graph
            got = backend.search(queries, 100)
            assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances), (bits, batch)
    assert None not in graphed._captured.values(), "every batch was captured: no compile failed in a capture"
    # The exact answers above hold whatever the estimate says; this checks it kept the GPU from refusing a launch.
    assert not graphed._unfit and not eager._unfit, f"scan_shared_bytes undershot: {graphed._unfit | eager._unfit}"
