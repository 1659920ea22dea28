"""Telling an allocation the machine could not make from other failures, for the command lines' one-line errors.

A run sized past its machine (a catalogue too large for the GPU, a batch too large for the host) is a setting the
user can change, not a fault in the code: the commands answer it with one line that says what could not be
allocated and which options make the run smaller, as they answer any other bad input, never with a traceback.
Allocators say it in their own ways: numpy raises ``MemoryError``; torch raises ``torch.OutOfMemoryError`` on a
GPU and a plain ``RuntimeError`` ("can't allocate memory") on the host; FAISS passes on CUDA's "out of memory".
"""

from __future__ import annotations

import re

_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|cannot allocate memory", re.IGNORECASE)
_ALLOCATOR_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?")
_BYTES = re.compile(r"(\d{7,}) bytes")
# torch's CUDA message goes on, on the same line, with the process's pools and a link: the user needs the first part.
_CUDA_DETAIL = re.compile(r"\s+(Including non-PyTorch memory|Of the allocated memory|See documentation)")


def out_of_memory(error: BaseException) -> str | None:
    """What the allocator could not allocate, on one line; None when ``error`` is not a failed allocation."""
    if not isinstance(error, MemoryError | RuntimeError):
        return None
    text = str(error).strip()
    named = isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
    if not named and not _OUT_OF_MEMORY.search(text):
        return None
    first = _ALLOCATOR_PREFIX.sub("", text.splitlines()[0].strip()) if text else ""
    first = _CUDA_DETAIL.split(first, maxsplit=1)[0]
    first = _BYTES.sub(lambda size: f"{int(size.group(1)) / 1e9:.1f} GB", first)
    return first or type(error).__name__
