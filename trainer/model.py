"""LightGCN: an input layer gives ego embeddings E⁰, propagation averages E⁰…E^K over Â.

The input layer is a module of its own so that compressed inputs (hashing, GNAQ codebooks) can
replace the embedding table without touching propagation or the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.graph import propagate


def layer_mean(ego: torch.Tensor, adjacency: torch.Tensor, layers: int) -> torch.Tensor:
    """LightGCN's representation of ego embeddings E⁰: the mean of E⁰ … E^K over Â, as a running sum.

    At its peak it holds the layer, the sum and the next layer (and whatever scratch the sparse product takes):
    E⁰ is let go once the first layer is added, so a decoded input (the hashed layer's, held by no one else) is
    freed there; propagation and the sum save nothing for their backward. Without autograd (validation, export) the
    sum also grows in place once it is its own.
    """
    layer = total = ego
    del ego  # the caller's temporary, if that is all it was, goes with the first layer
    in_place = not torch.is_grad_enabled()  # from the first addition on, ``total`` is never the caller's E⁰
    for k in range(layers):
        layer = propagate(adjacency, layer)
        total = total.add_(layer) if in_place and k > 0 else total + layer
    del layer
    return total.div_(layers + 1) if in_place and layers > 0 else total / (layers + 1)


class EmbeddingTable(nn.Module):
    """The classic O(n·d) ego-embedding table, initialised N(0, 0.1²) as in LightGCN."""

    def __init__(self, n_nodes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_nodes, dim) * 0.1)

    def forward(self) -> torch.Tensor:
        return self.weight

    def ego(self, nodes: torch.Tensor) -> torch.Tensor:
        """Ego embeddings of some nodes, for the L2 regulariser on the batch."""
        return self.weight[nodes]


class LightGCN(nn.Module):
    """E^(k+1) = Â E^(k) for k < K; ``forward`` returns the stack E^(0..K), shape [K+1, n_nodes, d].

    LightGCN's final embedding is the mean over layers; quantizers that use layers separately
    (BiGeaR) see them all. Rows are users first, then items.
    """

    adjacency: torch.Tensor

    def __init__(self, n_users: int, n_items: int, dim: int, layers: int, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.dim = dim
        self.layers = layers
        self.inputs: nn.Module = EmbeddingTable(n_users + n_items, dim)
        self.register_buffer("adjacency", adjacency, persistent=False)

    def forward(self) -> torch.Tensor:
        layer = self.inputs()
        stack = [layer]
        for _ in range(self.layers):
            layer = propagate(self.adjacency, layer)
            stack.append(layer)
        return torch.stack(stack)

    def layer_mean(self) -> torch.Tensor:
        """``forward().mean(dim=0)`` as a running sum: the K + 1 layers and their stack are never held at once.

        The stack costs 2(K + 1) n × d floats at its peak, the running sum three (``layer_mean``); propagation
        saves nothing for its backward, so neither does this. For callers that need only the mean of
        a large graph; the trainer's quantizers need the layers themselves.
        """
        return layer_mean(self.inputs(), self.adjacency, self.layers)

    def ego(self, nodes: torch.Tensor) -> torch.Tensor:
        """Ego embeddings of some nodes (users first, then items), for the L2 regulariser."""
        out: torch.Tensor = self.inputs.ego(nodes)  # type: ignore[operator]
        return out
