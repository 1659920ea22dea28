"""Several backends over contiguous slices of one catalogue (one per GPU, or several on one), merged exactly.

For catalogues larger than one device's memory. Each shard answers its own top-k with local ids; shifted
by the shard's offset those ids keep their order, so the merged (distance, id) top-k is the exact answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from index.retrieval.base import HammingBackend, TopK, select_topk

ShardFactory = Callable[[npt.NDArray[np.uint8], int], HammingBackend]  # (codes of the shard, shard number)


def shard_bounds(n_items: int, n_shards: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_items, n_shards + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class ShardedBackend(HammingBackend):
    def __init__(self, codes: npt.NDArray[np.uint8], n_shards: int, factory: ShardFactory) -> None:
        super().__init__(codes)
        if n_shards < 1:
            raise ValueError(f"n_shards must be at least 1, got {n_shards}")
        bounds = shard_bounds(self.n_items, n_shards)
        self._hold([factory(codes[a:b], i) for i, (a, b) in enumerate(bounds)])

    @classmethod
    def from_shards(cls, shards: Sequence[HammingBackend], *, parallel: bool = True) -> ShardedBackend:
        """Backends already built over consecutive slices of one catalogue (e.g. codes generated on each GPU).

        ``parallel=False`` searches the shards one after another (Triton's interpreter is not thread-safe).
        """
        if not shards or len({shard.n_bytes for shard in shards}) != 1:
            raise ValueError("shards must be a non-empty list of backends over codes of one width")
        backend = cls.__new__(cls)
        backend.n_items, backend.n_bytes = sum(shard.n_items for shard in shards), shards[0].n_bytes
        backend._hold(shards, parallel)
        return backend

    def _hold(self, shards: Sequence[HammingBackend], parallel: bool = True) -> None:
        self.shards = shards
        self.offsets = [int(offset) for offset in np.cumsum([0] + [shard.n_items for shard in shards[:-1]])]
        self.name = f"sharded[{len(shards)}×{shards[0].name}]"
        self._parallel = parallel and len(shards) > 1
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(shards) - 1), thread_name_prefix="shard")

    @property
    def memory_bytes(self) -> int:
        return sum(shard.memory_bytes for shard in self.shards)

    @property
    def on_gpu(self) -> bool:
        return any(shard.on_gpu for shard in self.shards)

    @property
    def fast_k(self) -> int:
        return min(shard.fast_k for shard in self.shards)

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        # Shards after the first run in the pool's threads (FAISS and CUDA work release the GIL, so GPUs
        # overlap); the first runs in this thread, which would only wait otherwise (one thread hop fewer).
        if not self._parallel:
            parts = [shard.search(queries, min(k, shard.n_items)) for shard in self.shards]
        else:
            later = [self._pool.submit(shard.search, queries, min(k, shard.n_items)) for shard in self.shards[1:]]
            parts = [self.shards[0].search(queries, min(k, self.shards[0].n_items)), *(f.result() for f in later)]
        distances = np.concatenate([p.distances for p in parts], axis=1)
        ids = np.concatenate(
            [np.where(p.ids >= 0, p.ids + off, -1) for p, off in zip(parts, self.offsets, strict=True)], axis=1
        )
        return select_topk(distances, ids, k)
