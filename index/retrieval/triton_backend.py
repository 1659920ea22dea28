"""Fused Hamming top-k for NVIDIA GPUs, written in Triton.

FAISS's ``GpuIndexBinaryFlat`` gives one warp to each query and keeps a per-query heap, so a single query
or a small batch leaves the GPU idle. Here every thread block scores a tile of (queries × items) with
XOR + popcount over 32-bit words held word-major (coalesced loads, no copy beyond the codes and a sample), and the
top-k uses the small integer distance range instead of a heap:

1. *Threshold.* Score ``n_sample`` items spread over the catalogue (``spread_sample``: its order may follow
   its codes), keep the nearest of each small group of them and sort each query's nearest of those. Their k-th
   distance bounds the answer from above (the *safe* bound); a smaller rank of them (the *tight* bound) lets
   only a few times k items through, so that is the bound used.
2. *Collect.* One pass over all items appends the key ``distance << 32 | id`` of every item within the
   bound to the query's buffer (an atomic counter per query hands out the slots).
3. *Select.* An integer top-k over the buffer orders by distance, then id: the exact answer.

Distances come from one of two tile kernels. Few queries: XOR + popcount, whose cost is one popcount per
(query, item, word) at 16 per SM per clock. Batches of ``MMA_MIN_QUERIES`` or more: tensor cores, since
popcount(q ^ c) = popcount(q) − Σ_b c_b · (2·q_b − 1): a tile's item bits are unpacked to int8 0/1 once
(shared memory, never written out) and multiplied with every query block's ±1 bits in an int8 matrix product,
so the per-pair cost falls from a popcount per word to a fraction of a multiply-add per bit. That pass only
lists the (query, tile) pairs with an item within the bound; a gather computes those few tiles' keys. Both
kernels are exact integers, and a tile with no item within any query's bound writes nothing. The unpacked bits
grow with the code width: wider than 640 bits, the scan takes smaller tiles (those that fit the device's shared
memory, ``scan_tiles``), and codes too wide for any tile are collected by popcounts.

A query whose tight bound let fewer than k items through is redone with its safe bound, and a buffer that
overflows (many ties at the bound) is redone with the exact count, so the result is exact whatever the
data. Cost: one pass over the codes plus the sample (at most 1/16 of them), against the floor of one pass.
Large batches over large catalogues are cut into query chunks so that the sampled distances, the key
buffers and the scan's tile bitmap stay within fixed budgets (``plan_chunks``); memory does not grow with
the catalogue beyond the codes themselves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import triton
from triton.runtime.errors import OutOfResources

from index.retrieval.base import MAX_K, HammingBackend, TopK
from index.retrieval.chunking import (
    FLAG_TILE,
    GRAPH_MAX_QUERIES,
    KEY_BUDGET,
    MAX_CHUNK,
    ChunkPlan,
    graph_k,
    graph_queries,
    most_sampled,
    next_power_of_two,
    plan_chunks,
    power_of_two_at_most,
    safe_capacity,
    sample_group,
    spread_sample,
    tight_rank,
)
from index.retrieval.torch_backend import ID_BITS, NO_KEY, nearest_keys, popcount64, split_keys
from index.retrieval.triton_kernels import _collect_kernel, _gather_kernel, _mma_scan_kernel, _sample_kernel

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter, used by the tests
log = logging.getLogger(__name__)
# Graph captures of every backend, one at a time: streams come from torch's per-device pool (two backends' capture
# streams may be the same one), and a capture synchronises the whole device anyway.
_CAPTURE_LOCK = threading.Lock()


def word_major(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """[n, bytes] → [words, n] int32 (zero-padded to whole words), so a warp loads one word of 32 items at once."""
    padded = np.zeros((codes.shape[0], -(-codes.shape[1] // 4) * 4), np.uint8)
    padded[:, : codes.shape[1]] = codes
    return np.ascontiguousarray(padded.view(np.int32).T)


@dataclass(frozen=True)
class _Chunk:
    """One query chunk's search state, kept until the host knows whether any query must be redone."""

    queries: torch.Tensor
    bounds: torch.Tensor  # the tight bound collected with
    safe_bounds: torch.Tensor  # the k-th of the sample's group minima: at least k items are within it
    counts: torch.Tensor
    found: torch.Tensor
    redo: torch.Tensor  # buffer overflowed, fewer than k items within the tight bound, or the flag list spilled
    safe_room: int  # key slots a query is expected to need within its safe bound


def _pack(chunks: list[_Chunk]) -> torch.Tensor:
    """Every chunk's answers, then every chunk's redo flags, in one int64 tensor: one transfer to the host,
    no round trip mid-search."""
    return torch.cat([chunk.found.flatten() for chunk in chunks] + [chunk.redo.to(torch.int64) for chunk in chunks])


# How a search waits for the GPU: "spin" (the default) polls as a plain .cpu() does, "sleep" blocks on a CUDA event.
CUDA_SYNC_ENV = "RECSYS_CUDA_SYNC"


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.cpu()``. A plain copy spins a core for as long as the GPU works, and a serving host's cores are what
    its HTTP workers run on; with ``RECSYS_CUDA_SYNC=sleep`` the calling thread sleeps on a CUDA event instead and
    gives that core back, at the price of a wake-up after every search."""
    if tensor.device.type != "cuda" or os.environ.get(CUDA_SYNC_ENV, "spin") != "sleep":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    landed = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
    landed.record()
    landed.synchronize()  # type: ignore[no-untyped-call]
    return host


ANY_K_TILE = 1 << 23  # (query, item) distances per slice of a search past the kernel's k: 64 MiB of int64
# (queries, k) shapes kept per backend: ``graph_queries`` has 22 batch shapes, k a power of two. Warm-up's set must
# fit: a search process merging 8 workers' batches of 64 warms 10 batch shapes × 9 fetches up to k = 4,096.
GRAPH_CACHE = 128


@dataclass(frozen=True)
class _Captured:
    """One search shape captured as a CUDA graph: static query words in, packed answers and flags out."""

    words: torch.Tensor
    graph: Any
    chunk: _Chunk
    packed: torch.Tensor


@dataclass(frozen=True)
class Tiles:
    """(queries × items) per thread block, warps per block and the distance kernel (``mma``: tensor cores,
    ``False``: popcounts, ``None``: by batch size); by default all chosen from the batch size. Tensor-core tiles
    too large for the device's shared memory at the code width give way to smaller ones (``scan_tiles``)."""

    block_q: int
    block_n: int
    warps: int = 4
    mma: bool | None = None


# From this batch on the tensor-core kernels run (at 64 queries they beat popcounts on an H200: 1.79 against
# 2.16 ms at 10M × 64-bit; the crossover below 64 is not measured).
MMA_MIN_QUERIES = 32
# Flagged words (of 32 tiles each) per gather program, scored one after another by one warp: 16 where the list
# fills many waves of programs (fastest at batch 1024 on an H200), fewer where it would leave SMs idle (2 at 1M
# items × 64 queries: 0.11 against 0.18 ms); ``gather_entries``. Swept by benchmarks/triton_tiles.py --gather-*.
GATHER_ENTRIES = 16
GATHER_WARPS = 1
GATHER_PROGRAMS_PER_SM = 32  # one-warp programs resident on an SM at once (its block limit)
GATHER_ROOM = 2  # the flagged-word list holds capacity / GATHER_ROOM entries per query


def gather_entries(room: int, sms: int) -> int:
    """Entries per gather program: up to ``GATHER_ENTRIES``, a power of two, while the list of ``room`` entries
    still fills a wave of programs on every SM."""
    return min(GATHER_ENTRIES, power_of_two_at_most(max(1, room // (sms * GATHER_PROGRAMS_PER_SM))))


def resident_programs(compiled: Any, warps: int, device: torch.device) -> int:
    """How many programs of a compiled kernel fit on one SM at once (registers, shared memory, warps); 2 where
    that is unknown (the interpreter)."""
    n_regs, shared = getattr(compiled, "n_regs", None), getattr(getattr(compiled, "metadata", None), "shared", None)
    if not n_regs or shared is None or device.type != "cuda":
        return 2
    properties = torch.cuda.get_device_properties(device)
    regs_per_warp = -(-n_regs * 32 // 256) * 256  # registers are handed out per warp, 256 at a time
    by_registers = getattr(properties, "regs_per_multiprocessor", 65536) // (regs_per_warp * warps)
    by_shared = getattr(properties, "shared_memory_per_multiprocessor", 233472) // (shared + 1024)  # 1 KiB/block
    by_warps = properties.max_threads_per_multi_processor // (32 * warps)
    return int(max(1, min(by_registers, by_shared, by_warps, 32)))  # 32 resident blocks per SM at most


def mma_words(words: int) -> tuple[int, int]:
    """How the MMA kernel splits a code's words: a power-of-two head, then the rest padded to a power of two."""
    head = power_of_two_at_most(words)
    tail = 0 if words == head else next_power_of_two(words - head)
    return head, tail


# Shared memory of the tensor-core scan beyond its two operands (reduction scratch; 128–512 bytes measured).
SCAN_SCRATCH = 1024
SCAN_STAGES = 3  # buffers of a software-pipelined load: Triton's default num_stages (the scan's launch sets none)
# The tensor-core scan's tiles, best first: 64 × 128, 4 warps (the fastest of 8 shapes at 64/256/576 bits × batch
# 1024 on an H200, within 10 % at batch 64: benchmarks/triton_tiles.py --kernels mma), then smaller ones for codes
# whose unpacked bits would not fit in shared memory at that size. BLOCK_N shrinks last: each tile reloads every
# query's signs (traffic ∝ batch / BLOCK_N), and the tile bitmap (``plan_chunks``) grows as 1 / BLOCK_N.
SCAN_TILES = tuple(Tiles(block_q, block_n) for block_n in (FLAG_TILE, 64, 32, 16) for block_q in (64, 32, 16))


def scan_shared_bytes(words: int, block_q: int, block_n: int, one_block: bool = False, async_dot: bool = True) -> int:
    """Shared memory ``_mma_scan_kernel`` needs over codes of ``words`` 32-bit words, at most: a tile's unpacked
    item bits and a query block's signs, 32 · (HEAD + TAIL) int8 rows each (``mma_words``). Over several query
    blocks (not ``ONE_BLOCK``) the signs are loaded in a software-pipelined loop: ``SCAN_STAGES`` buffers where
    the product is an asynchronous wgmma (``async_dot``: Hopper on, blocks of 64 queries), one fewer for mma.sync.

    Checked against what Triton 3.9 allocates for sm_90 and sm_80, with and without the launcher's divisibility
    hints (``triton.compile`` on a CPU), at 640 to 4,608 bits over the tiles ``scan_tiles`` picks: exact but for
    the scratch (205,056 bytes at 640 bits × 64 × 128 on sm_90; 246,016 at 768, the H200's error: its limit is
    232,448). A launch that needs more than this says all the same is caught (``TritonBackend._scan``)."""
    head, tail = mma_words(words)
    rows = 32 * (head + tail)
    buffers = 1 if one_block else SCAN_STAGES if async_dot and block_q >= 64 else SCAN_STAGES - 1
    return rows * (block_n + buffers * block_q) + SCAN_SCRATCH


def scan_tiles(
    words: int, n_queries: int, shared_limit: int | None, given: Tiles | None = None, async_dot: bool = True
) -> list[Tiles]:
    """The tensor-core scan's tiles for ``n_queries`` queries over ``words``-word codes, best first: ``given``
    (else ``SCAN_TILES``' first) and the smaller of ``SCAN_TILES``, each with its query block cut to the batch,
    keeping those whose ``scan_shared_bytes`` fit in ``shared_limit`` bytes (None: any, Triton's interpreter).
    Empty where none fits: the popcount kernel collects.

    >>> scan_tiles(words=20, n_queries=1024, shared_limit=232_448)[0]  # 640 bits: the default tiles
    Tiles(block_q=64, block_n=128, warps=4, mma=True)
    >>> scan_tiles(words=24, n_queries=1024, shared_limit=232_448)[0]  # 768 bits: fewer queries per block
    Tiles(block_q=32, block_n=128, warps=4, mma=True)
    """
    first = given or SCAN_TILES[0]
    smaller = [tiles for tiles in SCAN_TILES if tiles.block_q <= first.block_q and tiles.block_n <= first.block_n]
    found: list[Tiles] = []
    for tiles in (first, *smaller):
        block_q, block_n = max(16, min(tiles.block_q, next_power_of_two(n_queries))), max(16, tiles.block_n)
        cut = Tiles(block_q, block_n, first.warps, mma=True)
        need = scan_shared_bytes(words, block_q, block_n, n_queries <= block_q, async_dot)
        if (shared_limit is None or need <= shared_limit) and cut not in found:
            found.append(cut)
    return found


def _scan_variant(tiles: Tiles, n_queries: int) -> tuple[int, int, int, int]:
    """Which compiled ``_mma_scan_kernel`` a batch of ``n_queries`` scanned in ``tiles`` runs: (BLOCK_Q, BLOCK_N,
    warps, ONE_BLOCK)."""
    return tiles.block_q, tiles.block_n, tiles.warps, int(n_queries <= tiles.block_q)


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one thread block may opt in to on ``device``: the limit Triton checks a launch by."""
    optin = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None)  # torch ≥ 2.7
    if optin is None:
        optin = triton.runtime.driver.active.utils.get_device_properties(device.index)["max_shared_mem"]
    return int(optin)


def query_signs(queries: torch.Tensor, words_padded: int, n_padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-major query words ``[words, q]`` → their bits as ±1 int8, query-major ``[n_padded, 32 · words_padded]``
    (column 32·w + c holds bit r(c) of word w, r reversing c's five bits: the order ``_unpacked`` leaves item
    bits in; padding is 0, so it adds nothing to a product) and each query's popcount."""
    n_words, n_queries = queries.shape
    column = torch.arange(32, dtype=torch.int32, device=queries.device)  # on the device: capturable in a CUDA graph
    shifts = torch.zeros_like(column)
    for bit in range(5):  # r(c): the five bits of the column reversed
        shifts |= ((column >> bit) & 1) << (4 - bit)
    bits = ((queries.T[:, :, None] >> shifts[None, None, :]) & 1).reshape(n_queries, n_words * 32)
    signs = torch.zeros((n_padded, words_padded * 32), dtype=torch.int8, device=queries.device)
    signs[:n_queries, : n_words * 32] = (2 * bits - 1).to(torch.int8)
    return signs, bits.sum(dim=1, dtype=torch.int32)


class TritonBackend(HammingBackend):
    name = "triton"

    def __init__(
        self,
        codes: npt.NDArray[np.uint8],
        *,
        device: str | torch.device = "cuda",
        tiles: Tiles | None = None,
        graphs: bool = True,
    ) -> None:
        super().__init__(codes)
        self._hold(torch.from_numpy(word_major(codes)).to(torch.device(device)), tiles, graphs)

    @classmethod
    def from_word_major(
        cls, words: torch.Tensor, n_bytes: int, *, tiles: Tiles | None = None, graphs: bool = True
    ) -> TritonBackend:
        """A backend over codes already on the GPU as ``[words, n_items]`` int32 (no host copy: huge catalogues)."""
        if words.dtype != torch.int32 or words.ndim != 2 or words.shape[0] != -(-n_bytes // 4):
            raise ValueError(f"need [{-(-n_bytes // 4)}, n_items] int32 words for {n_bytes}-byte codes")
        backend = cls.__new__(cls)
        backend.n_items, backend.n_bytes = int(words.shape[1]), n_bytes
        backend._hold(words, tiles, graphs)
        return backend

    def _hold(self, words: torch.Tensor, tiles: Tiles | None = None, graphs: bool = True) -> None:
        if self.n_items >= 1 << 31:
            raise ValueError(f"at most 2^31 items per backend (shard larger catalogues), got {self.n_items}")
        self.device = words.device
        if self.device.type != "cuda" and not INTERPRETED:
            raise RuntimeError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 for tests)")
        self.codes = words  # [words, n]: the code size, no more
        # The items the threshold pass scores (``sample_rows``), gathered once so that its reads stay contiguous:
        # [words, s], s ≤ 131,072 items, a few MB (a smaller catalogue is all sampled, in a shuffled order).
        self.sample_rows = spread_sample(self.n_items, most_sampled(self.n_items, MAX_K))
        self._sampled = words[:, torch.from_numpy(self.sample_rows).to(self.device)].contiguous()
        self.words = int(words.shape[0])
        self.tiles = tiles
        self.graphs = graphs and self.device.type == "cuda" and not INTERPRETED
        # int8 tensor-core products (mma.sync / wgmma) from Ampere on; the interpreter runs them with numpy.
        self.tensor_cores = INTERPRETED or torch.cuda.get_device_capability(self.device) >= (8, 0)
        self.async_dot = INTERPRETED or torch.cuda.get_device_capability(self.device) >= (9, 0)  # wgmma
        self.sms = 2 if INTERPRETED else torch.cuda.get_device_properties(self.device).multi_processor_count
        self.shared_limit = None if INTERPRETED else shared_memory_limit(self.device)  # bounds the scan's tiles
        self._resident: dict[tuple[int, ...], int] = {}  # scan programs that fit on one SM, per kernel variant
        self._unfit: set[tuple[int, ...]] = set()  # scan variants whose launch ran out of resources on this device
        self._captured: OrderedDict[tuple[int, int], _Captured | None] = OrderedDict()
        # One memory pool and one capture stream for every graph of this backend: replays are serialised by the
        # lock below and each one's outputs are read on the host (never handed out as GPU tensors) before the
        # next replay, so their scratch (sample, keys, bitmap) can share memory; the allocator reuses a freed
        # block only on the stream it was freed on, hence one stream, and the pool holds about the largest
        # shape's scratch, not the sum over all cached shapes.
        self._graph_pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self._capture_stream = torch.cuda.Stream(self.device) if self.graphs else None  # type: ignore[no-untyped-call]
        self._graph_lock = threading.Lock()  # a captured graph's buffers serve one search at a time
        self._marks: list[tuple[str, Any]] | None = None  # CUDA events per phase while profiling

    def _mark(self, phase: str) -> None:
        if self._marks is not None:
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            self._marks.append((phase, event))

    def profile(self, queries: npt.NDArray[np.uint8], k: int) -> dict[str, float]:
        """Milliseconds per phase of one search (CUDA events): where the time goes, for tuning."""
        self._marks = []
        try:
            self._mark("start")
            self.search(queries, k)
            self._mark("copied to host")
            torch.cuda.synchronize(self.device)
            marks = self._marks
        finally:
            self._marks = None
        return {phase: start.elapsed_time(end) for (_, start), (phase, end) in zip(marks, marks[1:], strict=False)}

    @property
    def memory_bytes(self) -> int:
        return int((self.codes.numel() + self._sampled.numel()) * 4)

    @property
    def max_k(self) -> int:
        return max(MAX_K, self.n_items)  # past the kernel's buffers, ``_search_any_k``

    @property
    def fast_k(self) -> int:
        return MAX_K  # the kernel's buffers are sized for it

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"  # not under Triton's CPU interpreter

    def _uses_mma(self, n_queries: int) -> bool:
        if self.tiles is not None and self.tiles.mma is not None:
            return self.tiles.mma and self.tensor_cores
        return self.tensor_cores and n_queries >= MMA_MIN_QUERIES

    def _scan_tiles(self, n_queries: int) -> list[Tiles]:
        """``scan_tiles`` on this device, best first, less the variants that ran out of resources here."""
        given = self.tiles if self.tiles is not None and self.tiles.mma else None
        tiles = scan_tiles(self.words, n_queries, self.shared_limit, given, self.async_dot)
        return [t for t in tiles if _scan_variant(t, n_queries) not in self._unfit]

    def _flag_tile(self) -> int:
        """Items per bit of the scan's tile bitmap, for the chunk plan: the tile a full chunk is scanned with."""
        tiles = self._scan_tiles(MAX_CHUNK) if self._uses_mma(MAX_CHUNK) else []
        return tiles[0].block_n if tiles else FLAG_TILE

    def _popcount_tiles(self, n_queries: int) -> Tiles:
        # 16 × 128, 4 warps: the fastest of 18 shapes at batch 64 and 1024 on an H100 (benchmarks/triton_tiles.py).
        given = self.tiles if self.tiles is not None and not self.tiles.mma else None  # tiles for the popcount kernels
        tiles = given or Tiles(16, 128 if n_queries >= 16 else 256)
        return Tiles(min(tiles.block_q, next_power_of_two(n_queries)), tiles.block_n, tiles.warps, mma=False)

    def _launch(self, kernel: Any, n_cols: int, n_queries: int, *args: Any, **constexprs: Any) -> None:
        tiles = self._popcount_tiles(n_queries)
        grid = (triton.cdiv(n_cols, tiles.block_n), triton.cdiv(n_queries, tiles.block_q))
        kernel[grid](
            *args, WORDS=self.words, USE_POPC=not INTERPRETED, BLOCK_Q=tiles.block_q, BLOCK_N=tiles.block_n,
            num_warps=tiles.warps, **constexprs,
        )  # fmt: skip

    def bounds(self, queries: torch.Tensor, k: int, n_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's (tight, safe) bounds from the distances of ``n_sample`` items spread over the catalogue.

        Safe: the k-th smallest of the sampled group minima (``sample_group``): k distinct items are within it,
        so are the k nearest of all items, and about k · n / n_sample items in all. Tight: the j-th smallest
        (``tight_rank``): only a few times k items pass it, so the collect pass writes and selects far fewer
        keys. It can let fewer than k items through (rarely); such a query is redone with the safe bound.
        """
        n_queries = queries.shape[1]
        assert n_sample <= self._sampled.shape[1], "plan_chunks samples at most most_sampled(n_items, MAX_K) items"
        group = min(sample_group(n_sample, k), self._popcount_tiles(n_queries).block_n)  # a tile holds whole groups
        n_groups = -(-n_sample // group)
        sample = torch.empty((n_queries, n_groups), dtype=torch.int16, device=self.device)
        self._launch(
            _sample_kernel, n_sample, n_queries,
            queries, self._sampled, sample, n_queries, self._sampled.shape[1], n_sample, n_groups, GROUP=group,
        )  # fmt: skip
        self._mark("sample distances")
        # top-k's radix select, not kthvalue's sort.
        nearest = torch.topk(sample, k, dim=1, largest=False, sorted=True).values.to(torch.int32)
        tight = tight_rank(self.n_items, n_sample, k)
        return nearest[:, tight - 1].contiguous(), nearest[:, k - 1].contiguous()

    def collect(
        self, queries: torch.Tensor, bounds: torch.Tensor, capacity: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys ``distance << 32 | id`` of every item within each query's bound (``capacity`` slots per query,
        unordered), how many there were (more than ``capacity``: the buffer overflowed), and whether some keys
        were not written for lack of list room (the tensor-core path's spill; redo the batch with more room)."""
        n_queries = queries.shape[1]
        counts = torch.zeros(n_queries, dtype=torch.int32, device=self.device)
        keys = torch.full((n_queries, capacity), NO_KEY, dtype=torch.int64, device=self.device)
        spilled = self._collect_mma(queries, bounds, capacity, counts, keys) if self._uses_mma(n_queries) else None
        if spilled is None:  # popcounts: a small batch, or codes too wide for any tile of the tensor-core scan
            self._launch(
                _collect_kernel, self.n_items, n_queries,
                queries, self.codes, bounds, counts, keys, n_queries, self.n_items, capacity,
            )  # fmt: skip
            spilled = torch.zeros((), dtype=torch.bool, device=self.device)
        return keys, counts, spilled

    def _collect_mma(
        self, queries: torch.Tensor, bounds: torch.Tensor, capacity: int, counts: torch.Tensor, keys: torch.Tensor
    ) -> torch.Tensor | None:
        """``collect`` on tensor cores: a scan listing the (query, tile) pairs with an answer, then a gather.
        None where no tile of the scan fits this device (the caller collects by popcounts)."""
        n_queries = queries.shape[1]
        for tiles in self._scan_tiles(n_queries):
            tile_flags = self._scan(queries, bounds, counts, tiles)
            if tile_flags is not None:
                break
        else:
            return None
        self._mark("scan (tensor cores)")
        # The flagged words, without a host round trip: a flagged tile holds an answer, so a query within its
        # key buffer flags at most ``capacity`` tiles; room for 1 / GATHER_ROOM of that per query. A longer list
        # spills (returned: the caller redoes the batch with more room).
        flag_words = tile_flags.shape[1]
        room = n_queries * min(flag_words, max(1, capacity // GATHER_ROOM))
        entries = torch.nonzero_static(tile_flags, size=room, fill_value=-1).contiguous()  # CUDA's is column-major
        spilled: torch.Tensor = torch.count_nonzero(tile_flags) > room
        filled = torch.zeros(n_queries, dtype=torch.int32, device=self.device)
        per_program = gather_entries(room, self.sms)
        _gather_kernel[(triton.cdiv(room, per_program),)](
            queries, self.codes, bounds, tile_flags, entries, filled, keys,
            n_queries, self.n_items, flag_words, capacity, room,
            WORDS=self.words, USE_POPC=not INTERPRETED, BLOCK_N=tiles.block_n, ENTRIES=per_program,
            num_warps=GATHER_WARPS,
        )  # fmt: skip
        self._mark("gather")
        return spilled

    def _scan(
        self, queries: torch.Tensor, bounds: torch.Tensor, counts: torch.Tensor, tiles: Tiles
    ) -> torch.Tensor | None:
        """``_mma_scan_kernel`` with ``tiles`` (from ``_scan_tiles``): each query's bitmap of the item tiles holding
        an answer, its count added to ``counts``. None where the launch needs more shared memory (or registers)
        than the device has, which Triton finds before launching anything: the variant is remembered and later
        searches skip it. A CUDA graph's warm-up meets that first, never its capture."""
        n_queries = queries.shape[1]
        block_q, block_n = tiles.block_q, tiles.block_n
        head, tail = mma_words(self.words)
        n_padded = triton.cdiv(n_queries, block_q) * block_q
        signs, popcounts = query_signs(queries, head + tail, n_padded)
        min_dots = torch.full((n_padded,), 1 << 30, dtype=torch.int32, device=self.device)  # padding never hits
        min_dots[:n_queries] = popcounts - bounds
        n_tiles = triton.cdiv(self.n_items, block_n)
        flag_words = triton.cdiv(n_tiles, 32)
        tile_flags = torch.zeros((n_queries, flag_words), dtype=torch.int32, device=self.device)
        variant = _scan_variant(tiles, n_queries)
        programs = min(n_tiles, self.sms * self._resident.get(variant, 2))
        try:
            compiled = _mma_scan_kernel[(programs,)](
                signs, min_dots, self.codes, counts, tile_flags, n_padded, self.n_items, n_tiles, flag_words,
                WORDS=self.words, HEAD=head, TAIL=tail, BLOCK_Q=block_q, BLOCK_N=block_n,
                ONE_BLOCK=n_padded == block_q, num_warps=tiles.warps,
            )  # fmt: skip
        except OutOfResources as error:
            self._unfit.add(variant)
            log.warning("tensor-core scan of %d-bit codes in %d × %d tiles (%d queries) does not fit this GPU, "
                        "trying smaller tiles, then popcounts: %s",
                        32 * self.words, block_q, block_n, n_queries, error)  # fmt: skip
            return None
        if variant not in self._resident:  # one wave of persistent programs: as many as fit on an SM at once
            self._resident[variant] = resident_programs(compiled, tiles.warps, self.device)
        return tile_flags

    def _search_chunk(self, queries: torch.Tensor, k: int, plan: ChunkPlan) -> _Chunk:
        """Bound, collect and select without waiting on the GPU; queries to redo are marked, not redone."""
        bounds, safe_bounds = self.bounds(queries, k, plan.n_sample)
        self._mark("bound (top-k of the sample)")
        keys, counts, spilled = self.collect(queries, bounds, plan.capacity)
        self._mark("collect pass")
        found = torch.topk(keys, k, dim=1, largest=False, sorted=True).values
        self._mark("select top-k of the keys")
        redo = (counts > plan.capacity) | (counts < k) | spilled
        safe_room = safe_capacity(self.n_items, plan.n_sample, k)
        return _Chunk(queries, bounds, safe_bounds, counts, found, redo, safe_room)

    def _redo(self, chunk: _Chunk, k: int) -> None:
        """Collect the flagged queries again: within their safe bound where the tight one let fewer than k items
        through, with room for every key where a buffer overflowed (many ties at the bound) or the list spilled."""
        redo = torch.nonzero(chunk.redo).flatten()
        counts = chunk.counts[redo]
        under = counts < k
        bounds = torch.where(under, chunk.safe_bounds[redo], chunk.bounds[redo]).contiguous()
        room = max(int(counts.max()), chunk.safe_room if bool(under.any()) else 0, k)
        queries = chunk.queries[:, redo].contiguous()
        chunk.found[redo] = self._exact_keys(queries, bounds, chunk.safe_bounds[redo].contiguous(), k, room)
        self._mark("redo")

    def _exact_keys(
        self, queries: torch.Tensor, bounds: torch.Tensor, safe_bounds: torch.Tensor, k: int, room: int
    ) -> torch.Tensor:
        """The k nearest keys of each query, collecting until every one is complete: a bound that let fewer than
        k items through is replaced by the safe one, an overflow or a spill is collected again with more room.
        Queries go in batches of at most ``KEY_BUDGET`` keys (a single query may need more)."""
        step = max(1, KEY_BUDGET // room)
        if queries.shape[1] > step:
            return torch.cat([
                self._exact_keys(queries[:, s : s + step].contiguous(), bounds[s : s + step],
                                 safe_bounds[s : s + step], k, room)
                for s in range(0, queries.shape[1], step)
            ])  # fmt: skip
        keys, counts, spilled = self.collect(queries, bounds, room)
        under = counts < k  # only a tight bound: the safe one holds k sampled items
        if bool(under.any()):
            return self._exact_keys(queries, torch.where(under, safe_bounds, bounds), safe_bounds, k, room)
        most = int(counts.max())
        if most > room or bool(spilled):
            return self._exact_keys(queries, bounds, safe_bounds, k, max(most, 2 * room if bool(spilled) else room))
        return torch.topk(keys, k, dim=1, largest=False, sorted=True).values

    def _capture(self, n_queries: int, k: int) -> _Captured | None:
        """The search of ``n_queries`` × ``k`` as a CUDA graph (captured once, kept in a small LRU)."""
        key = (n_queries, k)
        if key in self._captured:
            self._captured.move_to_end(key)
            return self._captured[key]
        plan = plan_chunks(self.n_items, n_queries, k, self._flag_tile())
        captured = None
        if plan.queries >= n_queries:  # one chunk: the whole search is a fixed sequence of launches
            with _CAPTURE_LOCK:
                try:
                    captured = self._captured_search(n_queries, k, plan)
                except RuntimeError as error:  # this shape stays eager; a fresh pool, in case this one is stuck
                    log.warning("CUDA graph capture of %d queries × k=%d failed, searching eagerly: %s",
                                n_queries, k, str(error).splitlines()[0])  # fmt: skip
                    self._graph_pool = torch.cuda.graph_pool_handle()
        self._captured[key] = captured
        if len(self._captured) > GRAPH_CACHE:
            self._captured.popitem(last=False)
        return captured

    def _captured_search(self, n_queries: int, k: int, plan: ChunkPlan) -> _Captured:
        side = self._capture_stream
        assert side is not None
        words = torch.zeros((self.words, n_queries), dtype=torch.int32, device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # compile the kernels and warm the allocator before capturing
            self._search_chunk(words, k, plan)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Captured on this backend's stream: torch's default capture stream is one per process, and the shards
        # of a catalogue on one GPU capture from their threads.
        with torch.cuda.graph(graph, pool=self._graph_pool, stream=side, capture_error_mode="thread_local"):
            chunk = self._search_chunk(words, k, plan)
            packed = _pack([chunk])
        return _Captured(words, graph, chunk, packed)

    def _search_graphed(self, queries: npt.NDArray[np.uint8], k: int) -> TopK | None:
        """Replay a captured search: queries padded (``graph_queries``), k rounded up (``graph_k``)."""
        n_queries = queries.shape[0]
        n_padded, k_padded = graph_queries(n_queries), graph_k(k, self.n_items)
        with self._graph_lock:
            captured = self._capture(n_padded, k_padded)
            if captured is None:
                return None
            self._load_queries(captured, queries)
            captured.graph.replay()
            return split_keys(self._answers([captured.chunk], captured.packed, k_padded)[:n_queries, :k])

    def _load_queries(self, captured: _Captured, queries: npt.NDArray[np.uint8]) -> None:
        """Copy ``queries`` into a captured search's input, padded to its query count."""
        n_queries = queries.shape[0]
        host = np.empty(tuple(captured.words.shape), np.int32)
        host[:, :n_queries] = word_major(queries)
        # Padding repeats the first query: an all-zero code would tie with every item of one popcount and
        # could overflow its key buffer, forcing a host round trip and a redo on every search.
        host[:, n_queries:] = host[:, :1]
        captured.words.copy_(torch.from_numpy(host))

    def _answers(self, chunks: list[_Chunk], packed: torch.Tensor, k: int) -> torch.Tensor:
        """The chunks' answers on the host, ``[queries, k]``, from ``_pack``'s one transfer; flagged queries redone."""
        size = sum(chunk.found.numel() for chunk in chunks)
        host = to_host(packed)
        if bool(host[size:].any()):
            for chunk in chunks:
                if bool(chunk.redo.any()):
                    self._redo(chunk, k)
            host = torch.cat([chunk.found.flatten() for chunk in chunks]).cpu()
        return host[:size].view(-1, k)

    def _search_any_k(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        """A k past the kernel's buffers (a user skipping thousands of seen items): a plain torch pass over the
        codes this backend already holds on the device, slower than the kernel but far from the host's counting
        pass, and with no second copy of the codes."""
        q = torch.from_numpy(word_major(queries)).to(self.device)  # [words, queries] int32

        def distances(start: int, stop: int) -> torch.Tensor:
            out = torch.zeros(q.shape[1], stop - start, dtype=torch.int64, device=self.device)
            for word in range(self.words):  # 32-bit words, widened so that popcount64's masks apply
                out += popcount64((q[word, :, None] ^ self.codes[word, None, start:stop]).to(torch.int64) & 0xFFFFFFFF)
            return out

        return split_keys(nearest_keys(distances, q.shape[1], self.n_items, k, ANY_K_TILE))

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            # Triton launches on the current device: a shard on GPU 1 searched from any thread must set it.
            if k > MAX_K:
                return self._search_any_k(queries, k)
            if self.graphs and self._marks is None and queries.shape[0] <= GRAPH_MAX_QUERIES:
                graphed = self._search_graphed(queries, k)
                if graphed is not None:
                    return graphed
            words = torch.from_numpy(word_major(queries)).to(self.device)
            self._mark("queries to device")
            plan = plan_chunks(self.n_items, words.shape[1], k, self._flag_tile())
            step = plan.queries
            chunks = [
                self._search_chunk(words[:, s : s + step].contiguous(), k, plan) for s in range(0, words.shape[1], step)
            ]
            assert ID_BITS == 32
            return split_keys(self._answers(chunks, _pack(chunks), k))
