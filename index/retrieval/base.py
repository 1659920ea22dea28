"""The contract every top-k search backend meets, and the numpy reference the Hamming ones are tested against.

A backend holds its items' search forms (``codes.item_search_form``: packed ``uint8`` codes for binary layouts,
``float32`` vectors for floats) and answers exact top-k by *distance*, smaller nearer: the Hamming distance
between codes, the negated inner product between float vectors (``codes.scores_from_distances`` turns either
into scores). Low-bit codes tie a lot (a 256-bit code has 257 possible distances), so "exact" includes the
order: ascending distance, then ascending item id. Every backend returns the same ids and distances for the
same input; which one runs is a speed question only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from index.hamming import hamming_distances

# The largest k every backend answers (the GPU kernels' buffers are sized for it; FAISS's flat indexes take more).
# The service caps a request's k below it (``ServiceSettings.max_k``) and over-fetches for the seen items it skips.
MAX_K = 4096


@dataclass(frozen=True)
class TopK:
    """Row q: query q's nearest items, nearest first, ties by item id; short rows are padded with id -1 at a
    distance past every item's (``bits + 1`` for codes, +inf for float vectors)."""

    distances: npt.NDArray[np.number[Any]]
    ids: npt.NDArray[np.int64]


class SearchBackend(ABC):
    """Exact top-k over one set of item search forms; each backend knows its name, device and largest k."""

    name: str = "abstract"
    query_dtype: type[np.generic] = np.uint8  # element type of queries and items
    distance_dtype: type[np.generic] = np.int32
    n_items: int
    viewed: Any = None  # what the item codes are a view of, if anything: kept alive as long as the backend

    @property
    @abstractmethod
    def width(self) -> int:
        """Elements per query row: bytes of a packed code, or floats of a vector."""

    @property
    def max_k(self) -> int:
        """The largest k this backend answers; a larger one is refused (``MAX_K`` unless a backend takes more)."""
        return MAX_K

    @property
    def fast_k(self) -> int:
        """The largest k this backend answers on its fast path; up to ``max_k`` it still answers, but by a slower
        pass (a host one behind a GPU kernel), so a caller merging queries keeps those past it apart
        (``fetch_groups``)."""
        return self.max_k

    @property
    def on_gpu(self) -> bool:
        """Whether the items are searched on a GPU (what /readyz reports): each backend knows its own device."""
        return False

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the backend keeps for the items (codes and any copies), on its device."""

    @property
    @abstractmethod
    def padding_distance(self) -> float:
        """The distance padded slots (id -1) of short rows carry: past every item's."""

    # Whether searches wait on another process rather than compute here: such a backend answers ``search_async`` on
    # the caller's event loop, with no thread to hand the search to and no lock to take back from it.
    waits_on_peer: bool = False

    @abstractmethod
    def _search(self, queries: npt.NDArray[Any], k: int) -> TopK:
        """Exact top-k for validated queries and 1 <= k <= n_items."""

    async def _search_async(self, queries: npt.NDArray[Any], k: int) -> TopK:
        """``_search`` without blocking the event loop (a backend that ``waits_on_peer`` provides it)."""
        raise NotImplementedError(f"the {self.name} backend searches in this process: call search from a thread")

    def search(self, queries: npt.NDArray[Any], k: int) -> TopK:
        checked = self._checked(queries, k)
        if isinstance(checked, TopK):
            return checked
        return pad_topk(self._search(checked, min(k, self.n_items)), k, self.padding_distance)

    async def search_async(self, queries: npt.NDArray[Any], k: int) -> TopK:
        """``search`` awaited on an event loop: only for a backend that ``waits_on_peer``."""
        checked = self._checked(queries, k)
        if isinstance(checked, TopK):
            return checked
        return pad_topk(await self._search_async(checked, min(k, self.n_items)), k, self.padding_distance)

    def _checked(self, queries: npt.NDArray[Any], k: int) -> npt.NDArray[Any] | TopK:
        """The queries as the backend takes them (or the answer to no queries); ``ValueError`` for a bad request."""
        dtype = np.dtype(self.query_dtype)
        queries = np.ascontiguousarray(queries, dtype=dtype)
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise ValueError(f"queries must be [n, {self.width}] {dtype}, got {queries.shape}")
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be in 1..{self.max_k} (the largest k the {self.name} backend answers), got {k}")
        if queries.shape[0] == 0:
            return empty_topk(0, k, self.padding_distance, self.distance_dtype)
        return queries


def fetch_groups(fetches: npt.NDArray[np.integer[Any]], fast_k: int) -> list[npt.NDArray[np.int64]]:
    """Positions of ``fetches`` grouped into backend calls: the fetches a backend answers on its fast path
    (``SearchBackend.fast_k``) together, the larger ones apart. One call searches every query at its largest fetch,
    so a query skipping thousands of seen items would otherwise take its whole batch onto the slow path."""
    past = np.asarray(fetches) > fast_k
    return [group for group in (np.flatnonzero(~past), np.flatnonzero(past)) if group.size]


class HammingBackend(SearchBackend):
    """Exact Hamming top-k over packed codes (``uint8 [n_items, n_bytes]``)."""

    def __init__(self, codes: npt.NDArray[np.uint8]) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] == 0:
            raise ValueError(f"item codes must be a non-empty 2-d uint8 array, got shape {codes.shape}")
        self.n_items, self.n_bytes = int(codes.shape[0]), int(codes.shape[1])

    @property
    def width(self) -> int:
        return self.n_bytes

    @property
    def bits(self) -> int:
        return 8 * self.n_bytes

    @property
    def padding_distance(self) -> float:
        return self.bits + 1


def empty_topk(n_queries: int, k: int, distance: float = 1, dtype: npt.DTypeLike = np.int32) -> TopK:
    """``n_queries`` rows of ``k`` padded slots (id -1 at ``distance``)."""
    distances: npt.NDArray[np.number[Any]] = np.full((n_queries, k), distance, dtype=dtype)
    return TopK(distances, np.full((n_queries, k), -1, np.int64))


def pad_topk(found: TopK, k: int, distance: float) -> TopK:
    if found.ids.shape[1] == k:
        return found
    out = empty_topk(found.ids.shape[0], k, distance, found.distances.dtype)
    out.distances[:, : found.ids.shape[1]] = found.distances
    out.ids[:, : found.ids.shape[1]] = found.ids
    return out


PACKED_ID_BITS = 40  # select_topk sorts distance << 40 | id as one int64 (ids below 2^40 - 1)
_PACKED_ID_MASK = (1 << PACKED_ID_BITS) - 1


def select_topk(distances: npt.NDArray[np.number[Any]], ids: npt.NDArray[np.int64], k: int) -> TopK:
    """Top-k per row of candidate (distance, id) pairs, ascending distance then id; an id of -1 (a padded
    slot) goes after every item at its distance.

    Integer distance and id are packed into one int64 key per pair and sorted as one, several times faster than a
    two-key lexsort when shards' answers are merged. Float distances take the lexsort."""
    integer = np.issubdtype(distances.dtype, np.integer)
    if integer and distances.size and 0 <= distances.min() and distances.max() < 1 << (62 - PACKED_ID_BITS):
        if -1 <= ids.min() and ids.max() < _PACKED_ID_MASK:
            keys = (distances.astype(np.int64) << PACKED_ID_BITS) | np.where(ids >= 0, ids, _PACKED_ID_MASK)
            if k < keys.shape[1]:
                keys = np.partition(keys, k - 1, axis=1)[:, :k]
            keys.sort(axis=1)
            found = keys & _PACKED_ID_MASK
            return TopK((keys >> PACKED_ID_BITS).astype(np.int32), np.where(found == _PACKED_ID_MASK, -1, found))
    ids_for_order = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((ids_for_order, distances), axis=1)[:, :k]
    ordered = np.take_along_axis(distances, order, axis=1)
    if integer:
        ordered = ordered.astype(np.int32)
    return TopK(ordered, np.take_along_axis(ids, order, axis=1))


def reference_topk(
    queries: npt.NDArray[np.uint8], items: npt.NDArray[np.uint8], k: int, *, chunk: int = 1 << 18
) -> TopK:
    """The yardstick: brute force in numpy, item chunk by item chunk, merged exactly."""
    best: TopK | None = None
    for start in range(0, items.shape[0], chunk):
        block = hamming_distances(queries, items[start : start + chunk])
        ids = np.broadcast_to(np.arange(start, start + block.shape[1], dtype=np.int64), block.shape)
        found = select_topk(block, ids, k)
        if best is not None:
            found = select_topk(
                np.concatenate([best.distances, found.distances], axis=1),
                np.concatenate([best.ids, found.ids], axis=1),
                k,
            )
        best = found
    assert best is not None
    return best
