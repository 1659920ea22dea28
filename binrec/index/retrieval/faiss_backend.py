"""FAISS's brute-force binary indexes (`IndexBinaryFlat`, `GpuIndexBinaryFlat`) made exact in order.

FAISS returns the k nearest codes but, among codes at the k-th distance, an arbitrary subset in an
arbitrary order. A query's answer is settled once the fetched list reaches past that distance (every
tie is then inside it) or holds every item; otherwise the fetch doubles for that query.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from binrec.index.retrieval.base import HammingBackend, TopK, select_topk

try:
    import faiss
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError("FAISS is not installed: install the project with the `cpu` or `gpu` extra") from error

GPU_MAX_K = 2048  # GpuIndexBinaryFlat and GpuIndexFlat refuse larger k


def set_cpu_threads(threads: int) -> None:
    """OpenMP threads FAISS uses per CPU search (0 leaves its default: every core).

    A service runs one search at a time per worker beside its event loop: extra threads only spin-wait
    on the cores the event loop and the other workers need.
    """
    if threads > 0:
        faiss.omp_set_num_threads(threads)


def faiss_gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


class FaissBinaryBackend(HammingBackend):
    """``faiss-cpu`` (``IndexBinaryFlat``) or, with ``gpu=True``, ``GpuIndexBinaryFlat`` on one GPU."""

    def __init__(
        self, codes: npt.NDArray[np.uint8], *, gpu: bool = False, device: int = 0, cpu_index: Any | None = None
    ) -> None:
        """``cpu_index``: an ``IndexBinaryFlat`` already holding exactly ``codes``, used instead of a copy."""
        super().__init__(codes)
        if cpu_index is None:
            cpu_index = faiss.IndexBinaryFlat(self.bits)
            cpu_index.add(np.ascontiguousarray(codes, dtype=np.uint8))
        self.cpu_index = cpu_index
        self.gpu_index: Any | None = None
        if gpu:
            if faiss_gpu_count() <= device:
                raise RuntimeError("FAISS sees no GPU for the faiss-gpu backend (is faiss-gpu installed?)")
            config = faiss.GpuIndexBinaryFlatConfig()
            config.device = device
            self._resources = faiss.StandardGpuResources()
            self.gpu_index = faiss.GpuIndexBinaryFlat(self._resources, self.cpu_index, config)
        self.name = "faiss-gpu" if gpu else "faiss-cpu"

    @property
    def on_gpu(self) -> bool:
        return self.gpu_index is not None

    @property
    def memory_bytes(self) -> int:
        return self.n_items * self.n_bytes

    def _raw(self, queries: npt.NDArray[np.uint8], fetch: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        index = self.gpu_index if self.gpu_index is not None and fetch <= GPU_MAX_K else self.cpu_index
        distances, ids = index.search(queries, fetch)
        return distances.astype(np.int32), ids.astype(np.int64)

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        out_d = np.empty((queries.shape[0], k), np.int32)
        out_i = np.empty((queries.shape[0], k), np.int64)
        pending, fetch = np.arange(queries.shape[0]), min(self.n_items, k + 16)
        while pending.size:
            distances, ids = self._raw(queries[pending], fetch)
            settled = (distances[:, -1] > distances[:, k - 1]) | (fetch >= self.n_items)
            found = select_topk(distances[settled], ids[settled], k)
            out_d[pending[settled]], out_i[pending[settled]] = found.distances, found.ids
            pending, fetch = pending[~settled], min(self.n_items, fetch * 2)
        return TopK(out_d, out_i)
