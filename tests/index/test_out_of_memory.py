"""Failed allocations told from other failures, and said in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.out_of_memory import out_of_memory

# torch's own CUDA message, one line as it prints it (the H200's, from benchmarks/results/hash_scale.json)
CUDA_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.38 GiB. GPU 0 has a total capacity of 139.80 GiB of which 118.30 GiB is "
    "free. Including non-PyTorch memory, this process has 18.61 GiB memory in use. Of the allocated memory 17.59 GiB "
    "is allocated by PyTorch. See documentation for Memory Management (https://docs.pytorch.org/docs/stable/notes/)"
)


def raised(allocate: object) -> BaseException:
    with pytest.raises((MemoryError, RuntimeError)) as caught:
        allocate()  # type: ignore[operator]
    return caught.value


def test_numpy_and_torch_host_allocations_are_told_with_their_size() -> None:
    numpy_line = out_of_memory(raised(lambda: np.empty(10**14, np.int64)))
    assert numpy_line is not None and numpy_line.startswith("Unable to allocate") and "\n" not in numpy_line
    torch_line = out_of_memory(raised(lambda: torch.empty(10**13)))
    assert torch_line is not None and "can't allocate memory: you tried to allocate 40000.0 GB" in torch_line
    assert not torch_line.startswith("[enforce")  # the allocator's source location is not the user's business


def test_a_cuda_message_keeps_what_was_asked_and_what_was_free() -> None:
    line = out_of_memory(torch.OutOfMemoryError(CUDA_MESSAGE))
    assert line == (
        "CUDA out of memory. Tried to allocate 2.38 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
        "118.30 GiB is free."
    )
    faiss = RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory: out of memory\n")
    assert out_of_memory(faiss) == faiss.args[0].strip()


@pytest.mark.parametrize(
    "error",
    [ValueError("out of memory"), RuntimeError("shape mismatch"), KeyError("x"), RuntimeError(), OSError(12, "x")],
)
def test_other_failures_are_not_taken_for_memory(error: BaseException) -> None:
    assert out_of_memory(error) is None


def test_a_memory_error_without_a_message_is_named() -> None:
    assert out_of_memory(MemoryError()) == "MemoryError"
