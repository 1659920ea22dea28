"""Hashing-based input embeddings (Yeh et al., KDD'22): no O(n·d) table, and codes for unseen nodes.

The fixed c-bit code of each node comes from ``index.hash_codes`` (a seed-regenerated Gaussian projection of the
node's adjacency row, raw or smoothed by message passing, thresholded at its side's per-bit medians). The decoder
here splits the code into m groups of c/m bits; each group's integer picks a row of its own small learnable
codebook, the m rows are summed and an MLP gives the d-dim ego embedding. Parameters are m · 2^(c/m) · d + the MLP,
whatever the number of nodes. The MLP's width and depth are options: by default one hidden layer of d (on Gowalla at
192-bit codes the codebook-sum decoder measured 70 % of a table's Recall@20 with raw-row codes, 92 % with 3-hop
codes, docs/experiments/hashed_input.md: what the code sketches mattered, the decoder's size did not); wider and
deeper decoders (as in Kang et al.'s deep hash embeddings) spend the parameter budget on the decoder instead.
An optional per-node residual of r ≪ d dimensions, lifted to d by a learned matrix, gives each trained node a few
free parameters back (n · r: 1/16 of the table at r = 4, d = 64); nodes the model never saw get none.

The codes are fixed, so the codebook's gradient is one product with a fixed sparse matrix: ``lookup_t``, codebook
rows × nodes, a 1 where the row is one of the node's groups. ``embedding_bag``'s own backward sorts the n · m row
indices at every step instead, several times slower on CPUs and still slower on a GPU
(benchmarks/hash_decoder_speed.py). A batch's rows (the L2 term's egos) take the same product, their
gradient scattered into node space first: one more n × d buffer per step than embedding_bag's, and still faster.

Full-graph training decodes every node at every step, and the decoder's activations (codebook sums, the MLP's
hidden layers: a few n × d floats) cost about what the table's weights, gradient and Adam moments would. With
``decode_chunk`` > 0 all nodes are decoded that many at a time and each chunk is decoded again in the backward
(activation checkpointing): the decoder then holds one chunk's activations at a time, for one more decoder forward
per step, and its codebook gradient is ``embedding_bag``'s (a chunk's lookup would scatter into node space).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from index.hash_codes import cold_user_bits, graph_codes, group_indices, projection_rows, side_codes
from trainer.graph import to_torch_sparse

Backward = Literal["lookup", "bag"]


class _CodebookSum(torch.autograd.Function):
    """rows[j] = Σ_g codebook[flat[j, g]]; backward codebook_grad = lookupᵀ · (the nodes' gradients, all nodes).

    ``nodes`` says which node each output row is (None: all of them, in order), so the gradient of a batch's rows
    is scattered into node space first; repeated nodes add up, as they do in the forward's sum.
    """

    @staticmethod
    def forward(
        ctx: Any, codebook: torch.Tensor, flat: torch.Tensor, nodes: torch.Tensor | None, lookup_t: torch.Tensor
    ) -> torch.Tensor:
        ctx.lookup_t, ctx.nodes = lookup_t, nodes
        return nn.functional.embedding_bag(flat, codebook, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        lookup_t: torch.Tensor = ctx.lookup_t
        if ctx.nodes is not None:
            grad = torch.zeros(lookup_t.shape[1], grad.shape[1], device=grad.device, dtype=grad.dtype).index_add_(
                0, ctx.nodes, grad
            )
        return lookup_t @ grad, None, None, None


def codebook_lookup_t(flat: npt.NDArray[np.int64], rows: int) -> sp.csr_matrix:
    """[codebook rows, nodes]: a 1 at (r, j) for every group g with flat[j, g] = r."""
    n, groups = flat.shape
    nodes = np.repeat(np.arange(n, dtype=np.int64), groups)
    out = sp.csr_matrix((np.ones(n * groups, np.float32), (flat.ravel(), nodes)), shape=(rows, n))
    out.sum_duplicates()  # a node never repeats a row (each group has its own block): a no-op, kept for safety
    return out


class HashedInput(nn.Module):
    """Ego embeddings decoded from fixed hash codes: codebooks + MLP, no per-node parameters."""

    groups_of: torch.Tensor
    offsets: torch.Tensor
    user_medians: torch.Tensor
    lookup_t: torch.Tensor | None

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
        codebook_backward: Backward = "lookup",
        decode_chunk: int = 0,
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
        if decode_chunk < 0:
            raise ValueError(f"decode_chunk must be >= 0 (0: all nodes at once), got {decode_chunk}")
        if decode_chunk and codebook_backward == "lookup":
            raise ValueError("a chunked decode recomputes each chunk in the backward: use codebook_backward='bag'")
        self.decode_chunk = decode_chunk
        # None ("bag"): embedding_bag's own backward, kept to measure the two and for chunked decodes.
        lookup = self._lookup_t(torch.device("cpu")) if codebook_backward == "lookup" else None
        self.register_buffer("lookup_t", lookup, persistent=False)
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

    def _lookup_t(self, device: torch.device) -> torch.Tensor:
        flat = (self.groups_of + self.offsets).cpu().numpy()
        return to_torch_sparse(codebook_lookup_t(flat, self.codebook.shape[0]), device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Loaded codes (a checkpoint's, a snapshot's) replace ``groups_of``: the lookup derived from it follows."""
        incoming = state_dict.get(prefix + "groups_of")
        changed = incoming is not None and (
            incoming.shape != self.groups_of.shape
            or not torch.equal(incoming.to(self.groups_of.device), self.groups_of)
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if changed and self.lookup_t is not None:
            self.lookup_t = self._lookup_t(self.codebook.device)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Embeddings of codes given as group indices [n, m] (serving's check, cold start): plain backward."""
        return self._decoded(nn.functional.embedding_bag(indices + self.offsets, self.codebook, mode="sum"))

    def forward(self) -> torch.Tensor:
        decoded = self._trained(None) if not self.decode_chunk else self._chunked()
        return decoded if self.residual is None else decoded + self.lift(self.residual)

    def ego(self, nodes: torch.Tensor) -> torch.Tensor:
        decoded = self._trained(nodes)
        return decoded if self.residual is None else decoded + self.lift(self.residual[nodes])

    def _trained(self, nodes: torch.Tensor | None) -> torch.Tensor:
        """Trained nodes' embeddings (None: all, in order), the codebook's gradient through the fixed lookup."""
        # One fused gather-and-sum: indexing then summing would materialise nodes × groups × d floats
        # (4.6 GB a forward for Gowalla's 70k nodes at 256 groups) and scatter as much back.
        flat = (self.groups_of if nodes is None else self.groups_of[nodes]) + self.offsets
        if self.lookup_t is None:
            return self._decoded(nn.functional.embedding_bag(flat, self.codebook, mode="sum"))
        rows = _CodebookSum.apply(self.codebook, flat, nodes, self.lookup_t)  # type: ignore[no-untyped-call]
        return self._decoded(rows)

    def _chunked(self) -> torch.Tensor:
        """Every node's embedding, ``decode_chunk`` nodes at a time, each chunk recomputed in the backward."""
        if not torch.is_grad_enabled():
            return torch.cat([self._trained(chunk) for chunk in self._chunks()])
        # The decoder draws nothing at random: no RNG state to save, which a CUDA graph's capture could not read.
        parts = [
            checkpoint(self._trained, chunk, use_reentrant=False, preserve_rng_state=False) for chunk in self._chunks()
        ]
        return torch.cat(parts)  # type: ignore[arg-type]

    def _chunks(self) -> list[torch.Tensor]:
        n = self.groups_of.shape[0]
        device = self.groups_of.device
        return [torch.arange(s, min(s + self.decode_chunk, n), device=device) for s in range(0, n, self.decode_chunk)]

    def _decoded(self, rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(rows)
        return out


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "HashedInput", "cold_user_bits", "graph_codes", "group_indices", "parameter_count", "projection_rows", "side_codes",
]  # fmt: skip
