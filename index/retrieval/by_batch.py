"""One catalogue behind two CPU backends, each answering the batch sizes it is fastest at.

For millions of items of 64-bit codes on a few CPU cores, one query is answered fastest by the counting pass
(``numpy``, one pass without a heap) and a large batch by FAISS's threaded ``IndexBinaryFlat``; the crossover sits
between 4 and 16 queries (BENCHMARKS.md, search speed, CPU). Both hold the codes (the counting pass views them,
FAISS copies them), so this costs one more copy of the codes, at most 32 MB at ≤ 64 bits and ≤ 4M items (none in
the service, whose FAISS index the counting pass views).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index.retrieval.base import HammingBackend, TopK


class ByBatchBackend(HammingBackend):
    """``small`` answers batches of up to ``max_small_batch`` queries, ``large`` the rest (same ids and order)."""

    def __init__(
        self, small: HammingBackend, large: HammingBackend, max_small_batch: int, *, shared_codes: bool = False
    ) -> None:
        if (small.n_items, small.n_bytes) != (large.n_items, large.n_bytes):
            raise ValueError("both backends must hold the same catalogue")
        self.n_items, self.n_bytes = small.n_items, small.n_bytes
        self.small, self.large, self.max_small_batch = small, large, max_small_batch
        self.shared_codes = shared_codes  # ``small`` views ``large``'s codes (the service's FAISS index)
        self.name = f"{small.name}+{large.name}"

    @property
    def memory_bytes(self) -> int:
        return self.large.memory_bytes + (0 if self.shared_codes else self.small.memory_bytes)

    @property
    def on_gpu(self) -> bool:
        return self.small.on_gpu or self.large.on_gpu

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        backend = self.small if queries.shape[0] <= self.max_small_batch else self.large
        return backend._search(queries, k)
