"""Exact Hamming top-k in plain torch, on the CPU or any CUDA GPU: the portable fallback.

Distances come from a SWAR popcount over 64-bit words (torch has no popcount op); the top-k keys
``distance << 32 | item id`` sort by distance, then id, so one integer top-k gives the exact order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from index.retrieval.base import HammingBackend, TopK

M1, M2, M4, H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101
ID_BITS = 32
NO_KEY = torch.iinfo(torch.int64).max


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Bits set in each int64 (the masks also clear what an arithmetic shift drags in)."""
    x = x - ((x >> 1) & M1)
    x = (x & M2) + ((x >> 2) & M2)
    x = (x + (x >> 4)) & M4
    return (x * H01) >> 56


def to_words(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """[n, bytes] → [n, words] int64, zero-padded to whole words (zeros on both sides XOR to nothing)."""
    padded = np.zeros((codes.shape[0], -(-codes.shape[1] // 8) * 8), np.uint8)
    padded[:, : codes.shape[1]] = codes
    return padded.view(np.int64)


def merge_keys(best: torch.Tensor | None, keys: torch.Tensor, k: int) -> torch.Tensor:
    keys = keys if best is None else torch.cat([best, keys], dim=1)
    return torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=True).values


def nearest_keys(
    distances: Callable[[int, int], torch.Tensor], n_queries: int, n_items: int, k: int, tile_elements: int
) -> torch.Tensor:
    """The k smallest keys ``distance << 32 | id`` of each query, in exact order, over items scored a slice at a
    time: ``distances(start, stop)`` gives the ``[queries, stop - start]`` int64 distances to those items. Any k:
    the running top-k is merged with each slice's keys."""
    chunk = max(1024, tile_elements // max(1, n_queries))
    best: torch.Tensor | None = None
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        found = distances(start, stop)
        ids = torch.arange(start, stop, device=found.device)
        best = merge_keys(best, (found << ID_BITS) | ids, k)
    assert best is not None
    return best


def split_keys(keys: torch.Tensor) -> TopK:
    keys = keys.cpu()
    return TopK((keys >> ID_BITS).to(torch.int32).numpy(), (keys & ((1 << ID_BITS) - 1)).numpy())


class TorchBackend(HammingBackend):
    name = "torch"

    def __init__(
        self, codes: npt.NDArray[np.uint8], *, device: str | torch.device = "cpu", tile_elements: int = 1 << 24
    ) -> None:
        super().__init__(codes)
        if self.n_items >= 1 << ID_BITS:
            raise ValueError(f"at most 2^{ID_BITS} items per backend (shard larger catalogues), got {self.n_items}")
        self.device = torch.device(device)
        self.items = torch.from_numpy(to_words(codes)).to(self.device)  # [n, words]: the code size, no more
        self.tile_elements = tile_elements
        self.name = f"torch-{self.device.type}"

    @property
    def memory_bytes(self) -> int:
        return int(self.items.numel() * 8)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def _search(self, queries: npt.NDArray[np.uint8], k: int) -> TopK:
        q = torch.from_numpy(to_words(queries)).to(self.device)

        def distances(start: int, stop: int) -> torch.Tensor:
            items = self.items[start:stop]
            out = torch.zeros(q.shape[0], items.shape[0], dtype=torch.int64, device=self.device)
            for word in range(q.shape[1]):
                out += popcount64(q[:, word, None] ^ items[None, :, word])
            return out

        return split_keys(nearest_keys(distances, q.shape[0], self.n_items, k, self.tile_elements))
