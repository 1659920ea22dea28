"""Hashing-based input embeddings (Yeh et al., KDD'22): no O(n·d) table, and codes for unseen nodes.

The fixed c-bit code of each node comes from ``index.hash_codes`` (a seed-regenerated Gaussian projection of the
node's adjacency row, raw or smoothed by message passing, thresholded at its side's per-bit medians). The decoder
here splits the code into m groups of c/m bits; each group's integer picks a row of its own small learnable
codebook, the m rows are summed and an MLP gives the d-dim ego embedding. Parameters are m · 2^(c/m) · d + the MLP,
whatever the number of nodes. The MLP's width and depth are options: by default one hidden layer of d (on Gowalla at
192-bit codes the codebook-sum decoder measured 70 % of a table's Recall@20 with raw-row codes, 92 % with 3-hop
codes, BENCHMARKS.md #6: what the code sketches mattered, the decoder's size did not); wider and deeper decoders
(as in Kang et al.'s deep hash embeddings) spend the parameter budget on the decoder instead.
An optional per-node residual of r ≪ d dimensions, lifted to d by a learned matrix, gives each trained node a few
free parameters back (n · r: 1/16 of the table at r = 4, d = 64); nodes the model never saw get none.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from index.hash_codes import cold_user_bits, graph_codes, group_indices, projection_rows, side_codes


class HashedInput(nn.Module):
    """Ego embeddings decoded from fixed hash codes: codebooks + MLP, no per-node parameters."""

    groups_of: torch.Tensor
    offsets: torch.Tensor
    user_medians: torch.Tensor

    def __init__(
        self,
        indices: npt.NDArray[np.int64],
        group_bits: int,
        dim: int,
        *,
        user_medians: npt.NDArray[np.float32] | None = None,
        seed: int = 0,
        hidden: int = 0,
        depth: int = 1,
        residual_dim: int = 0,
        hops: tuple[int, ...] = (0,),
        propagation: dict[str, npt.NDArray[np.float32]] | None = None,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.hops = hops
        # What coding a new user needs beside the medians (item degrees, basis: index.hash_codes.graph_codes);
        # host arrays for the export, never moved to the device.
        self.propagation = dict(propagation or {})
        self.hash_bits = group_bits * indices.shape[1]
        medians = user_medians if user_medians is not None else np.zeros(self.hash_bits, np.float32)
        self.register_buffer("user_medians", torch.from_numpy(np.asarray(medians, np.float32)))
        n_groups = indices.shape[1]
        self.register_buffer("groups_of", torch.from_numpy(indices))
        self.register_buffer("offsets", torch.arange(n_groups) * (1 << group_bits))
        self.codebook = nn.Parameter(torch.randn(n_groups * (1 << group_bits), dim) * 0.1)
        if depth < 1:
            raise ValueError(f"the decoder needs at least one hidden layer, got depth {depth}")
        width = hidden or dim
        layers: list[nn.Module] = [nn.Linear(dim, width), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.Tanh()]
        self.mlp = nn.Sequential(*layers, nn.Linear(width, dim))
        self.residual: nn.Parameter | None = None
        if residual_dim:
            self.residual = nn.Parameter(torch.randn(indices.shape[0], residual_dim) * 0.1)
            self.lift = nn.Linear(residual_dim, dim, bias=False)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        # One fused gather-and-sum: indexing then summing would materialise nodes × groups × d floats
        # (4.6 GB a forward for Gowalla's 70k nodes at 256 groups) and scatter as much back.
        rows = nn.functional.embedding_bag(indices + self.offsets, self.codebook, mode="sum")
        out: torch.Tensor = self.mlp(rows)
        return out

    def forward(self) -> torch.Tensor:
        decoded = self.decode(self.groups_of)
        return decoded if self.residual is None else decoded + self.lift(self.residual)

    def ego(self, nodes: torch.Tensor) -> torch.Tensor:
        decoded = self.decode(self.groups_of[nodes])
        return decoded if self.residual is None else decoded + self.lift(self.residual[nodes])


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "HashedInput", "cold_user_bits", "graph_codes", "group_indices", "parameter_count", "projection_rows", "side_codes",
]  # fmt: skip
