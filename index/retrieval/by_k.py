"""One catalogue behind two backends: a fast one for the k it is built for, one that ranks any k for larger ones.

Some backends answer at most ``MAX_K`` (the torch pass, several shards merged); a caller that skips many seen items
(an evaluation user with thousands of training items) may still need a longer list. The counting pass (``numpy``)
ranks any number of items in one pass over the codes on the host, which it views where they lie, so those rare
searches cost no second copy. (The Triton backend answers such a k itself, on the device.)
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from index.retrieval.base import SearchBackend, TopK


class ByKBackend(SearchBackend):
    """``bounded`` answers k up to its ``max_k``, ``any_k`` the larger ones (same ids and order); named after
    ``bounded``, which answers the searches that matter for speed."""

    def __init__(self, bounded: SearchBackend, any_k: SearchBackend) -> None:
        if (bounded.n_items, bounded.width) != (any_k.n_items, any_k.width):
            raise ValueError("both backends must hold the same catalogue")
        self.bounded, self.any_k = bounded, any_k
        self.n_items, self.name = bounded.n_items, bounded.name
        self.query_dtype, self.distance_dtype = bounded.query_dtype, bounded.distance_dtype

    @property
    def width(self) -> int:
        return self.bounded.width

    @property
    def max_k(self) -> int:
        return self.any_k.max_k

    @property
    def fast_k(self) -> int:
        return self.bounded.fast_k

    @property
    def on_gpu(self) -> bool:
        return self.bounded.on_gpu

    @property
    def memory_bytes(self) -> int:
        return self.bounded.memory_bytes + self.any_k.memory_bytes

    @property
    def padding_distance(self) -> float:
        return self.bounded.padding_distance

    def _search(self, queries: npt.NDArray[Any], k: int) -> TopK:
        backend = self.bounded if k <= self.bounded.max_k else self.any_k
        return backend._search(queries, k)
