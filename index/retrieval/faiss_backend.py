"""FAISS's brute-force indexes as exact search backends, and the FAISS index a bundle stores.

``IndexBinaryFlat`` (or ``GpuIndexBinaryFlat``) searches packed codes by Hamming distance, ``IndexFlatIP`` (or
its GPU copy) float vectors by inner product. FAISS returns the k nearest but, among items at the k-th
distance, an arbitrary subset in an arbitrary order. A query's answer is settled once the fetched list reaches
past that distance (every tie is then inside it) or holds every item; otherwise the fetch doubles for that query.

The CPU index is also what a bundle stores (``stored_index``): a FAISS backend searches it in place, no copy.

FAISS is an extra (``cpu`` or ``gpu``), not a core dependency: this module imports it on first use
(``import_faiss``), so the package, and every backend but these, work where it is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from index.retrieval.base import MAX_K, HammingBackend, SearchBackend, TopK, select_topk

# FAISS's GPU selection refuses a larger k: searches past it run on the CPU index, which the GPU copy came from.
FAISS_GPU_MAX_K = 2048

RawSearch = Callable[[npt.NDArray[Any], int], tuple[npt.NDArray[np.number[Any]], npt.NDArray[np.int64]]]


class FaissMissing(RuntimeError):
    """Something that needs FAISS was asked for where it is not installed."""


def import_faiss(needed_by: str = "this") -> ModuleType:
    """The ``faiss`` module; ``FaissMissing`` naming ``needed_by`` and the extra to install when it cannot be
    imported.

    FAISS's loader logs at INFO which instruction set it loaded; imported on first use, after the service or the
    CLI configured logging, those lines would land among the request logs, so they are kept to warnings unless
    someone set that logger's level."""
    loader = logging.getLogger("faiss.loader")
    if loader.level == logging.NOTSET:
        loader.setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as error:
        raise FaissMissing(
            f"{needed_by} needs FAISS, which is not installed here: install the project with the `cpu` or `gpu` extra"
        ) from error
    return faiss


def has_faiss() -> bool:
    """Whether FAISS can be imported here (tried, not looked up: an installed FAISS may still fail to load)."""
    try:
        import_faiss()
    except FaissMissing:
        return False
    return True


def set_cpu_threads(threads: int) -> None:
    """OpenMP threads FAISS uses per CPU search (0 leaves its default: every core).

    A service runs one search at a time per worker beside its event loop: extra threads only spin-wait
    on the cores the event loop and the other workers need. Without FAISS there is nothing to set: the other
    CPU backends search on the calling thread alone.
    """
    if threads > 0 and has_faiss():
        import_faiss().omp_set_num_threads(threads)


def faiss_gpu_count() -> int:
    """GPUs FAISS can use here: none without FAISS, or with the CPU build."""
    if not has_faiss():
        return 0
    get = getattr(import_faiss(), "get_num_gpus", None)
    return int(get()) if get is not None else 0


def stored_index(forms: npt.NDArray[Any]) -> Any:
    """The FAISS index over items' search forms: ``IndexBinaryFlat`` for packed codes, ``IndexFlatIP`` for floats."""
    faiss = import_faiss("FAISS's index of the items")
    index: Any
    if forms.dtype == np.uint8:
        index = faiss.IndexBinaryFlat(8 * forms.shape[1])
        index.add(np.ascontiguousarray(forms))
    else:
        index = faiss.IndexFlatIP(forms.shape[1])
        index.add(np.ascontiguousarray(forms, dtype=np.float32))
    return index


def is_binary(index: Any) -> bool:
    return isinstance(index, import_faiss().IndexBinary)


def read_stored_index(path: Path, *, binary: bool) -> Any:
    faiss = import_faiss(f"reading {path}")
    return (faiss.read_index_binary if binary else faiss.read_index)(str(path))


def write_stored_index(index: Any, path: Path) -> None:
    """The index written to ``path`` by FAISS itself, CPU form: no copy of it in this process's memory."""
    faiss = import_faiss()
    (faiss.write_index_binary if is_binary(index) else faiss.write_index)(index, str(path))


def serialize_stored_index(index: Any) -> bytes:
    """The index as bytes, CPU form (GPU placement is a runtime choice, not a file format)."""
    faiss = import_faiss()
    serialize = faiss.serialize_index_binary if is_binary(index) else faiss.serialize_index
    return bytes(serialize(index).tobytes())


def stored_forms(index: Any) -> npt.NDArray[Any]:
    """A view of the items' search forms inside ``index`` (no copy): ``uint8`` codes or ``float32`` vectors."""
    faiss = import_faiss()
    forms: npt.NDArray[Any]
    if is_binary(index):
        size = index.ntotal * index.code_size
        forms = faiss.rev_swig_ptr(index.xb.data(), size).reshape(index.ntotal, index.code_size)
    else:
        forms = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return forms


def settled_topk(raw: RawSearch, queries: npt.NDArray[Any], k: int, n_items: int, first_fetch: int) -> TopK:
    """Exact top-k from a search whose ties at the k-th distance come in any subset and order: fetch more than
    k, keep the rows whose last fetched distance lies past the k-th (or that hold every item), redo the rest
    with twice the fetch."""
    found: list[tuple[npt.NDArray[np.int64], TopK]] = []
    pending, fetch = np.arange(queries.shape[0]), min(n_items, first_fetch)
    while pending.size:
        distances, ids = raw(queries[pending], fetch)
        settled = (distances[:, -1] > distances[:, k - 1]) | (fetch >= n_items)
        found.append((pending[settled], select_topk(distances[settled], ids[settled], k)))
        pending, fetch = pending[~settled], min(n_items, fetch * 2)
    out = TopK(np.empty((queries.shape[0], k), found[0][1].distances.dtype), np.empty((queries.shape[0], k), np.int64))
    for rows, part in found:
        out.distances[rows], out.ids[rows] = part.distances, part.ids
    return out


class FlatIndexPair:
    """A FAISS flat index on the CPU and, where asked, its copy on one GPU; a fetch past what FAISS's GPU search
    answers (``FAISS_GPU_MAX_K``) goes to the CPU index, so the backend has no largest k of its own."""

    cpu_index: Any
    gpu_index: Any | None
    n_items: int

    @property
    def on_gpu(self) -> bool:
        return self.gpu_index is not None

    @property
    def max_k(self) -> int:
        return max(MAX_K, self.n_items)

    @property
    def fast_k(self) -> int:
        return FAISS_GPU_MAX_K if self.gpu_index is not None else self.max_k

    def index_for(self, fetch: int) -> Any:
        return self.gpu_index if self.gpu_index is not None and fetch <= FAISS_GPU_MAX_K else self.cpu_index


class FaissBinaryBackend(FlatIndexPair, HammingBackend):
    """``faiss-cpu`` (``IndexBinaryFlat``) or, with ``gpu=True``, ``GpuIndexBinaryFlat`` on one GPU."""

    def __init__(
        self, codes: npt.NDArray[np.uint8], *, gpu: bool = False, device: int = 0, cpu_index: Any | None = None
    ) -> None:
        """``cpu_index``: an ``IndexBinaryFlat`` already holding exactly ``codes``, used instead of a copy."""
        faiss = import_faiss(f"the {'faiss-gpu' if gpu else 'faiss-cpu'} backend")
        super().__init__(codes)
        self.cpu_index = cpu_index if cpu_index is not None else stored_index(np.asarray(codes, np.uint8))
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
    def memory_bytes(self) -> int:
        return self.n_items * self.n_bytes

    def _raw(self, queries: npt.NDArray[np.uint8], fetch: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        distances, ids = self.index_for(fetch).search(queries, fetch)
        return distances.astype(np.int32), ids.astype(np.int64)

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        return settled_topk(self._raw, queries, k, self.n_items, k + 16)


class FaissFloatBackend(FlatIndexPair, SearchBackend):
    """``faiss-float-cpu`` (``IndexFlatIP``) or, with ``gpu=True``, its copy on one GPU (``faiss-float-gpu``):
    exact inner-product search over float vectors (the `fp` reference bundles). Distances are the negated
    inner products, so that nearer is smaller as for codes.

    Example::

        backend = FaissFloatBackend(item_vectors)
        found = backend.search(user_vectors, 20)  # found.distances == -(user · item) of the 20 best items
    """

    query_dtype = np.float32
    distance_dtype = np.float32

    def __init__(
        self, vectors: npt.NDArray[np.floating], *, gpu: bool = False, device: int = 0, cpu_index: Any | None = None
    ) -> None:
        """``cpu_index``: an ``IndexFlatIP`` already holding exactly ``vectors``, used instead of a copy."""
        faiss = import_faiss("searching float32 item vectors (FAISS's inner product is their one backend)")
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise ValueError(f"item vectors must be a non-empty 2-d array, got shape {vectors.shape}")
        self.n_items, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self.cpu_index = cpu_index if cpu_index is not None else stored_index(np.asarray(vectors, np.float32))
        self.gpu_index: Any | None = None
        if gpu:
            if faiss_gpu_count() <= device:
                raise RuntimeError("device=gpu asked for, but FAISS sees no GPU (is faiss-gpu installed?)")
            self._resources = faiss.StandardGpuResources()
            self.gpu_index = faiss.index_cpu_to_gpu(self._resources, device, self.cpu_index)
        self.name = "faiss-float-gpu" if gpu else "faiss-float-cpu"

    @property
    def width(self) -> int:
        return self.dim

    @property
    def memory_bytes(self) -> int:
        return self.n_items * self.dim * 4

    @property
    def padding_distance(self) -> float:
        return np.inf

    def _raw(
        self, queries: npt.NDArray[np.float32], fetch: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        similarities, ids = self.index_for(fetch).search(queries, fetch)
        return -similarities.astype(np.float32), ids.astype(np.int64)

    def _search(self, queries: npt.NDArray[np.float32], k: int) -> TopK:
        return settled_topk(self._raw, queries, k, self.n_items, k + 1)  # float scores rarely tie
