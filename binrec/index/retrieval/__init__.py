"""Exact Hamming top-k behind one interface, on whichever backend is fastest where it runs.

Backends: ``faiss-cpu`` (``IndexBinaryFlat``), ``numpy`` (one counting pass on the CPU), ``faiss-gpu``
(``GpuIndexBinaryFlat``), ``triton`` (our fused GPU kernel), ``torch`` (portable fallback, CPU or CUDA); any
of them sharded over several devices. They return identical ids and distances (ties broken by item id).
``auto`` picks, in order: ``triton`` when torch sees a CUDA GPU and Triton is installed, ``faiss-gpu`` when
FAISS sees a GPU, else the fastest exact CPU backend for the catalogue on our 2-core benchmark
(BENCHMARKS.md): ``numpy`` up to 200k items of ≤ 128-bit codes; ``numpy+faiss-cpu`` (counting for batches of
≤ 4 queries, FAISS for larger ones) up to 4M items of ≤ 64-bit codes; ``faiss-cpu`` beyond.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from binrec.index.retrieval.base import MAX_K, HammingBackend, TopK, reference_topk
from binrec.index.retrieval.by_batch import ByBatchBackend
from binrec.index.retrieval.counting_backend import SMALL_BATCH, CountingBackend, cpu_choice
from binrec.index.retrieval.faiss_backend import FaissBinaryBackend, faiss_gpu_count
from binrec.index.retrieval.sharded import ShardedBackend

BackendName = Literal["auto", "numpy", "numpy+faiss-cpu", "faiss-cpu", "faiss-gpu", "triton", "torch"]
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
GPU_BACKENDS = ("triton", "faiss-gpu")

__all__ = [
    "BACKENDS",
    "MAX_K",
    "BackendName",
    "HammingBackend",
    "TopK",
    "available_backends",
    "make_backend",
    "reference_topk",
    "resolve_backend",
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


def available_backends() -> list[str]:
    """Backends that can run here, fastest first (the order ``auto`` follows)."""
    found = []
    if _cuda_devices() and _has_triton():
        found.append("triton")
    if faiss_gpu_count():
        found.append("faiss-gpu")
    found += ["faiss-cpu", "numpy", "numpy+faiss-cpu"]
    if _has_torch():
        found.append("torch")
    return found


def _single(codes: npt.NDArray[np.uint8], name: str, device: int, cpu_index: Any | None = None) -> HammingBackend:
    if name == "numpy":
        return CountingBackend(codes)
    if name == "faiss-cpu":
        return FaissBinaryBackend(codes, cpu_index=cpu_index)
    if name == "numpy+faiss-cpu":
        faiss_cpu = FaissBinaryBackend(codes, cpu_index=cpu_index)  # with ``cpu_index``, ``codes`` view its memory
        return ByBatchBackend(CountingBackend(codes), faiss_cpu, SMALL_BATCH, shared_codes=cpu_index is not None)
    if name == "faiss-gpu":
        return FaissBinaryBackend(codes, gpu=True, device=device)
    if name == "triton":
        from binrec.index.retrieval.triton_backend import TritonBackend

        return TritonBackend(codes, device=f"cuda:{device}")
    if name == "torch":
        from binrec.index.retrieval.torch_backend import TorchBackend

        return TorchBackend(codes, device=f"cuda:{device}" if _cuda_devices() else "cpu")
    raise ValueError(f"unknown retrieval backend {name!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(
    backend: str = "auto", device: Literal["auto", "cpu", "gpu"] = "auto", shape: tuple[int, int] | None = None
) -> str:
    """The backend ``make_backend`` will build: ``auto`` is the fastest available on ``device``.

    On a CPU that depends on the catalogue (``shape`` = items × code bytes): ``numpy`` (one counting pass)
    for small catalogues of narrow codes, ``numpy+faiss-cpu`` (by batch size) for millions of 64-bit codes,
    ``faiss-cpu`` beyond (``cpu_choice``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown retrieval backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    on_cpu = cpu_choice(shape[0], 8 * shape[1]) if shape is not None else "faiss-cpu"
    if device == "cpu":
        return on_cpu
    found = available_backends()
    if device == "gpu":
        gpu = [name for name in found if name in GPU_BACKENDS]
        if not gpu:
            raise RuntimeError("device=gpu asked for, but neither Triton with CUDA nor faiss-gpu is usable here")
        return gpu[0]
    return found[0] if found[0] in GPU_BACKENDS else on_cpu


def make_backend(
    codes: npt.NDArray[np.uint8],
    backend: str = "auto",
    *,
    device: Literal["auto", "cpu", "gpu"] = "auto",
    shards: int | None = None,
    cpu_index: Any | None = None,
) -> HammingBackend:
    """A backend over ``codes``; GPU backends shard over every visible GPU unless ``shards`` says otherwise.

    With one GPU, ``shards > 1`` puts several shards on it (catalogues beyond one index's limits).
    ``cpu_index``: a FAISS ``IndexBinaryFlat`` holding ``codes``, reused by an unsharded ``faiss-cpu`` (alone or
    behind ``numpy+faiss-cpu``).
    """
    name = resolve_backend(backend, device, (int(codes.shape[0]), int(codes.shape[1])))
    if name in ("triton", "faiss-gpu") and name not in available_backends():
        raise RuntimeError(f"retrieval backend {name!r} needs a GPU it can use here; available: {available_backends()}")
    gpus = max(1, _cuda_devices() if name == "triton" else faiss_gpu_count() if name == "faiss-gpu" else 1)
    count = shards if shards is not None else (gpus if name in ("triton", "faiss-gpu") else 1)
    if count <= 1:
        return _single(codes, name, 0, cpu_index)
    return ShardedBackend(codes, count, lambda part, i: _single(part, name, i % gpus))
