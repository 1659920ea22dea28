"""Exact top-k search behind one interface, on whichever backend is fastest where it runs.

Codes (Hamming distance): ``faiss-cpu`` (``IndexBinaryFlat``), ``numpy`` (one counting pass on the CPU),
``faiss-gpu`` (``GpuIndexBinaryFlat``), ``triton`` (our fused GPU kernel), ``torch`` (portable fallback, CPU or
CUDA); any of them sharded over several devices. They return identical ids and distances (ties broken by item
id). ``auto`` picks, in order: ``triton`` when torch sees a CUDA GPU and Triton is installed, ``faiss-gpu`` when
FAISS sees a GPU, else the fastest exact CPU backend for the catalogue on our 2-core benchmark (BENCHMARKS.md):
``numpy`` up to 200k items of ≤ 128-bit codes; ``numpy+faiss-cpu`` (counting for batches of ≤ 4 queries, FAISS
for larger ones) up to 4M items of ≤ 64-bit codes; ``faiss-cpu`` beyond.

Float vectors (inner product) have one backend, FAISS's ``IndexFlatIP`` on the device asked for
(``faiss-float-cpu`` or ``faiss-float-gpu``): the choice among code backends does not apply to them.

FAISS is an extra (``cpu`` or ``gpu``): without it this package imports, ``auto`` leaves the FAISS backends out
(``numpy`` on a CPU), and naming one is refused with the extra to install (``faiss_backend.FaissMissing``).

``backend_for_items`` is what ``ItemIndex`` searches its items' search forms with (over a bundle's stored FAISS
index where one is searched, ``backend_for_index``); ``make_backend`` builds one over codes alone (benchmarks,
GPU-generated catalogues).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, assert_never, get_args

import numpy as np
import numpy.typing as npt

from index.retrieval.base import MAX_K, HammingBackend, SearchBackend, TopK, fetch_groups, reference_topk
from index.retrieval.by_batch import ByBatchBackend
from index.retrieval.by_k import ByKBackend
from index.retrieval.counting_backend import SMALL_BATCH, CountingBackend, cpu_choice
from index.retrieval.faiss_backend import (
    FaissBinaryBackend,
    FaissFloatBackend,
    FaissMissing,
    faiss_gpu_count,
    has_faiss,
    import_faiss,
    read_stored_index,
    serialize_stored_index,
    stored_forms,
    stored_index,
    write_stored_index,
)
from index.retrieval.sharded import ShardedBackend

GpuBackendName = Literal["triton", "faiss-gpu"]  # backends that need a GPU, fastest first
CpuBackendName = Literal["numpy", "numpy+faiss-cpu", "faiss-cpu"]
# The one list of code backends a setting or option may name (RECSYS_RETRIEVAL_BACKEND, recsys-index --backend).
BackendName = Literal["auto", CpuBackendName, GpuBackendName, "torch"]
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
GPU_BACKENDS: tuple[GpuBackendName, ...] = get_args(GpuBackendName)
CPU_BACKENDS: tuple[CpuBackendName, ...] = get_args(CpuBackendName)
FAISS_BACKENDS: tuple[BackendName, ...] = ("numpy+faiss-cpu", "faiss-cpu", "faiss-gpu")  # need the cpu/gpu extra
DevicePreference = Literal["auto", "cpu", "gpu"]

__all__ = [
    "BACKENDS",
    "GPU_BACKENDS",
    "MAX_K",
    "BackendName",
    "DevicePreference",
    "FaissMissing",
    "HammingBackend",
    "SearchBackend",
    "TopK",
    "available_backends",
    "backend_for_index",
    "backend_for_items",
    "fetch_groups",
    "has_faiss",
    "import_faiss",
    "make_backend",
    "read_stored_index",
    "reference_topk",
    "resolve_backend",
    "serialize_stored_index",
    "write_stored_index",
    "stored_forms",
    "stored_index",
    "uses_faiss",
]


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _cuda_devices() -> int:
    """GPUs torch can use; none without torch, which the CPU service image leaves out."""
    if not _has_torch():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _gpus(name: BackendName) -> int:
    """GPUs the backend ``name`` can use here (none for a CPU backend)."""
    match name:
        case "triton":
            return _cuda_devices() if _has_triton() else 0
        case "faiss-gpu":
            return faiss_gpu_count()
        case _:
            return 0


def available_backends() -> list[BackendName]:
    """Backends that can run here, GPU ones first, fastest first (the order ``auto`` follows on a GPU)."""
    found: list[BackendName] = [name for name in GPU_BACKENDS if _gpus(name)]
    found += [name for name in CPU_BACKENDS if name not in FAISS_BACKENDS or has_faiss()]
    if _has_torch():
        found.append("torch")
    return found


def _check_name(backend: str) -> BackendName:
    for name in BACKENDS:
        if backend == name:
            return name
    raise ValueError(f"unknown retrieval backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _single(
    codes: npt.NDArray[np.uint8], name: BackendName, device: int, cpu_index: Any | None = None
) -> HammingBackend:
    match name:
        case "numpy":
            return CountingBackend(codes)
        case "faiss-cpu":
            return FaissBinaryBackend(codes, cpu_index=cpu_index)
        case "numpy+faiss-cpu":  # the counting pass views FAISS's copy of the codes: one copy for both
            faiss_cpu = FaissBinaryBackend(codes, cpu_index=cpu_index)
            counting = CountingBackend(stored_forms(faiss_cpu.cpu_index))
            return ByBatchBackend(counting, faiss_cpu, SMALL_BATCH, shared_codes=True)
        case "faiss-gpu":
            return FaissBinaryBackend(codes, gpu=True, device=device)
        case "triton":
            from index.retrieval.triton_backend import TritonBackend

            return TritonBackend(codes, device=f"cuda:{device}")
        case "torch":
            from index.retrieval.torch_backend import TorchBackend

            return TorchBackend(codes, device=f"cuda:{device}" if _cuda_devices() else "cpu")
        case "auto":
            raise ValueError("resolve 'auto' to a backend first")
        case _:
            assert_never(name)


def resolve_backend(
    backend: str = "auto", device: DevicePreference = "auto", shape: tuple[int, int] | None = None
) -> BackendName:
    """The backend ``make_backend`` will build: ``auto`` is the fastest available on ``device``.

    On a CPU that depends on the catalogue (``shape`` = items × code bytes): ``numpy`` (one counting pass)
    for small catalogues of narrow codes, ``numpy+faiss-cpu`` (by batch size) for millions of 64-bit codes,
    ``faiss-cpu`` beyond (``cpu_choice``); ``numpy`` wherever FAISS is not installed. A FAISS backend named where
    FAISS is not installed is refused (``FaissMissing``).
    """
    name = _check_name(backend)
    if device == "gpu" and name in CPU_BACKENDS or device == "cpu" and name in GPU_BACKENDS:
        fitting = ", ".join((*GPU_BACKENDS, "torch") if device == "gpu" else (*CPU_BACKENDS, "torch"))
        raise ValueError(f"the {name} backend cannot search on the {device.upper()}: with device {device}, choose "
                         f"auto, {fitting}")  # fmt: skip
    if name in FAISS_BACKENDS:
        import_faiss(f"the {name} retrieval backend")  # refused here, naming the extra to install, without FAISS
    if name != "auto":
        return name
    on_cpu = _check_name(cpu_choice(shape[0], 8 * shape[1]) if shape is not None else "faiss-cpu")
    if on_cpu in FAISS_BACKENDS and not has_faiss():
        on_cpu = "numpy"
    if device == "cpu":
        return on_cpu
    found = available_backends()
    if device == "gpu":
        gpu = [name for name in found if name in GPU_BACKENDS]
        if not gpu:
            raise RuntimeError("device=gpu asked for, but neither Triton with CUDA nor faiss-gpu is usable here")
        return gpu[0]
    return found[0] if found[0] in GPU_BACKENDS else on_cpu


def uses_faiss(backend: str, device: DevicePreference, shape: tuple[int, int], *, binary: bool = True) -> bool:
    """Whether the backend ``backend_for_items`` builds over search forms of ``shape`` (items × bytes of packed
    codes, or × floats) searches a FAISS index: a FAISS code backend, or any backend over float vectors."""
    return not binary or resolve_backend(backend, device, shape) in FAISS_BACKENDS


def make_backend(
    codes: npt.NDArray[np.uint8],
    backend: str = "auto",
    *,
    device: DevicePreference = "auto",
    shards: int | None = None,
    cpu_index: Any | None = None,
) -> HammingBackend:
    """A backend over ``codes``; GPU backends shard over every visible GPU unless ``shards`` says otherwise.

    With one GPU, ``shards > 1`` puts several shards on it (catalogues beyond one index's limits).
    ``cpu_index``: a FAISS ``IndexBinaryFlat`` holding ``codes``, reused by an unsharded ``faiss-cpu`` (alone or
    behind ``numpy+faiss-cpu``).
    """
    name = resolve_backend(backend, device, (int(codes.shape[0]), int(codes.shape[1])))
    gpus = _gpus(name)
    if name in GPU_BACKENDS and not gpus:
        raise RuntimeError(f"retrieval backend {name!r} needs a GPU it can use here; available: {available_backends()}")
    count = shards if shards is not None else max(1, gpus)
    if count <= 1:
        return _single(codes, name, 0, cpu_index)
    return ShardedBackend(codes, count, lambda part, i: _single(part, name, i % max(1, gpus)))


def backend_for_items(
    forms: npt.NDArray[Any], backend: str = "auto", *, device: DevicePreference = "auto", stored: Any | None = None
) -> SearchBackend | None:
    """The backend that searches items' search forms (``codes.item_search_form``); None when there are none.

    Packed codes get ``backend`` (``make_backend``), float vectors FAISS's inner product on ``device``. The
    backend searches ``forms`` where they lie (a bundle's memory-mapped codes stay shared between the processes
    that map them); a backend that needs them elsewhere copies them itself (into a FAISS index, onto a GPU).
    ``stored``: a FAISS index holding exactly ``forms`` (``forms`` then view its memory), which FAISS backends
    search instead of a copy of their own. Searches for more results than the backend takes (``max_k``) go to the
    counting pass over the same forms, which ranks any k."""
    found: SearchBackend
    if forms.dtype != np.uint8:
        if device == "gpu" and faiss_gpu_count() == 0:
            raise RuntimeError("device=gpu asked for, but FAISS sees no GPU (is faiss-gpu installed?)")
        if forms.shape[0] == 0:
            return None
        gpu = device == "gpu" or (device == "auto" and faiss_gpu_count() > 0)
        found = FaissFloatBackend(forms, gpu=gpu, cpu_index=stored)
    elif forms.shape[0] == 0:
        return None
    else:
        found = make_backend(forms, backend, device=device, cpu_index=stored)
        if found.max_k < found.n_items:
            found = ByKBackend(found, CountingBackend(forms))
    found.viewed = stored
    return found


def backend_for_index(
    cpu_index: Any, backend: str = "auto", *, device: DevicePreference = "auto"
) -> SearchBackend | None:
    """``backend_for_items`` over a stored FAISS index's items (``faiss_backend.stored_index``), viewed in place."""
    return backend_for_items(stored_forms(cpu_index), backend, device=device, stored=cpu_index)
