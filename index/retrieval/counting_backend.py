"""Exact Hamming top-k on the CPU in one pass over the codes, whatever k and however many ties.

Distances are small integers (0…bits), so the k-th smallest is found by counting, not by a heap: one
XOR + popcount pass gives a query's distances, a binary search over 0…bits counting the distances ≤ t
finds the threshold t where that count reaches k, and the items at distance ≤ t (already in id order)
hold the answer; only those few are sorted (stably, so ties stay in id order). FAISS's
``IndexBinaryFlat`` keeps a heap of k and, to get ties in id order, has to fetch past every item at the
k-th distance: on 64-bit codes hundreds tie there, and its cost grows with k, where counting's does not, so it
ranks any number of items (the fallback of backends with a largest k). Memory is the codes themselves, viewed
as 64-bit words when they divide: a bundle's memory-mapped codes are searched where they lie, not copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from index.retrieval.base import MAX_K, HammingBackend, TopK

# Queries × items held at once: a 64-bit XOR word, a popcount byte and a distance each (~40 MB at most).
DISTANCE_BUDGET = 1 << 22
# Where it beats FAISS (BENCHMARKS.md, 2-core VM): one pass of a few words per item wins while the catalogue is
# small; on wide codes or millions of items FAISS's SIMD popcount and threads win (1M × 256-bit: 9.6 vs 1.4 ms).
FASTEST_UP_TO_ITEMS = 200_000
FASTEST_UP_TO_BITS = 128


# Beyond that, for 64-bit codes up to 4M items it still wins small batches (≤ 4 queries; 1M items: 1.3–2.4 ms
# against 2.5–4.8 ms for one query, 7.3 against 12.2 for four) while FAISS wins from 16 queries on.
SMALL_BATCHES_UP_TO_ITEMS = 4_000_000
SMALL_BATCHES_UP_TO_BITS = 64
SMALL_BATCH = 4


def cpu_choice(n_items: int, bits: int) -> str:
    """The backend ``auto`` takes on a CPU for this catalogue (measured, see above): ``numpy`` where counting wins
    every batch, ``numpy+faiss-cpu`` where it wins small batches only, ``faiss-cpu`` elsewhere."""
    if n_items <= FASTEST_UP_TO_ITEMS and bits <= FASTEST_UP_TO_BITS:
        return "numpy"
    if n_items <= SMALL_BATCHES_UP_TO_ITEMS and bits <= SMALL_BATCHES_UP_TO_BITS:
        return "numpy+faiss-cpu"
    return "faiss-cpu"


class CountingBackend(HammingBackend):
    """``numpy``: XOR + ``np.bitwise_count`` over packed words, then the k-th distance found by counting."""

    name = "numpy"

    def __init__(self, codes: npt.NDArray[np.uint8], *, distance_budget: int = DISTANCE_BUDGET) -> None:
        super().__init__(codes)
        self.distance_budget = distance_budget
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.word: type[np.unsignedinteger[Any]] = np.uint64 if self.n_bytes % 8 == 0 else np.uint8
        self.words: npt.NDArray[np.unsignedinteger[Any]] = codes.view(self.word)  # [n_items, words per code]
        self.distance_dtype = np.uint8 if self.bits < 256 else np.uint16

    @property
    def max_k(self) -> int:
        return max(MAX_K, self.n_items)  # one pass whatever k: no buffers sized for a largest k

    @property
    def memory_bytes(self) -> int:
        return self.n_items * self.n_bytes

    def _distances(self, queries: npt.NDArray[np.uint8]) -> npt.NDArray[np.unsignedinteger]:
        """``[n_queries, n_items]`` Hamming distances, word by word (no [queries, items, words] temporary)."""
        words: npt.NDArray[np.unsignedinteger[Any]] = np.ascontiguousarray(queries).view(self.word)
        shape = (words.shape[0], self.n_items)
        xor, count = np.empty(shape, self.word), np.empty(shape, np.uint8)
        out = np.zeros(shape, self.distance_dtype)
        for column in range(words.shape[1]):
            np.bitwise_xor(words[:, column, None], self.words[None, :, column], out=xor)
            np.bitwise_count(xor, out=count)
            np.add(out, count, out=out)
        return out

    def _kth_smallest(self, distance: npt.NDArray[np.unsignedinteger[Any]], k: int) -> int:
        """The smallest t with at least k distances ≤ t: a binary search over 0…bits, one counting pass a probe
        (log2(bits + 1) cheap passes; half the time of a histogram, which widens every distance to int64)."""
        low, high = 0, self.bits
        while low < high:
            middle = (low + high) // 2
            if np.count_nonzero(distance <= middle) >= k:
                high = middle
            else:
                low = middle + 1
        return low

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        out_d = np.empty((queries.shape[0], k), np.int32)
        out_i = np.empty((queries.shape[0], k), np.int64)
        step = max(1, self.distance_budget // self.n_items)
        for start in range(0, queries.shape[0], step):
            distances = self._distances(queries[start : start + step])
            for row, distance in enumerate(distances, start=start):
                threshold = self._kth_smallest(distance, k)
                candidates = np.flatnonzero(distance <= threshold)  # ascending ids
                order = np.argsort(distance[candidates], kind="stable")[:k]
                out_d[row] = distance[candidates[order]]
                out_i[row] = candidates[order]
        return TopK(out_d, out_i)
