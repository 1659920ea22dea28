"""GNAQ (CIKM'25): node-aware dynamic 2-bit quantization of the ego embeddings.

Each node n has a learnable codebook C_n ∈ R⁴ and 2-bit codes a_n ∈ {0..3}^d; its ego embedding is
x_{n,d} = tanh(C_n[a_{n,d}]). Codes and codebooks start from a full-precision pre-training stage
(quartile bins of the node's embedding; each level the mean of its bin). After every optimizer step
the codes are re-binned from the *propagated* output h_n, so intervals are refined by message passing;
C_n learns only through propagation (no straight-through estimator).

Serving: the final embedding h_n is coded the same way — quartile bins a_n (2 bits per dimension) and a
per-node level table L_n[q] = mean of h_n over bin q — which the bundle stores as ``planes2`` codes and
``levels`` scales [n, 4]; the index re-ranks Hamming candidates with the true levels.
"""

from __future__ import annotations

import torch
from torch import nn

from index.codes import CodeLayout, ScaleMode, encode_planes2
from trainer.quantization.base import ExportedCodes, Method, Quantizer, Side, as_numpy

LEVELS = 4


def quartile_bins(x: torch.Tensor) -> torch.Tensor:
    """Per row, 0..3 by rank: each quarter of a node's dimensions gets one code (ties by position)."""
    ranks = torch.argsort(torch.argsort(x, dim=1, stable=True), dim=1, stable=True)
    return (ranks * LEVELS) // x.shape[1]


def bin_means(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[n, 4] mean of each node's values in each of its bins."""
    sums = torch.zeros(x.shape[0], LEVELS, device=x.device, dtype=x.dtype).scatter_add_(1, codes, x)
    counts = torch.zeros_like(sums).scatter_add_(1, codes, torch.ones_like(x))
    return sums / counts.clamp(min=1)


class NodeCodebookInput(nn.Module):
    """Ego embeddings from 2-bit codes and per-node 4-level codebooks (replaces the embedding table)."""

    codes: torch.Tensor

    def __init__(
        self, n_nodes: int, dim: int, pretrained: torch.Tensor | None = None, *, bins_from: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if dim < LEVELS:
            raise ValueError(f"gnaq needs dim >= {LEVELS}, got {dim}")
        self.codebook = nn.Parameter(torch.zeros(n_nodes, LEVELS))
        self.register_buffer("codes", torch.zeros(n_nodes, dim, dtype=torch.long))
        if pretrained is not None:
            with torch.no_grad():
                # Codes follow the propagated output's quartiles from the first step on (see after_step);
                # binning the pre-trained output here keeps the first re-bin from scrambling the codebooks.
                codes = quartile_bins(pretrained if bins_from is None else bins_from)
                self.codes.copy_(codes)
                self.codebook.copy_(torch.atanh(bin_means(pretrained, codes).clamp(-0.999, 0.999)))

    def forward(self) -> torch.Tensor:
        return torch.tanh(self.codebook.gather(1, self.codes))

    def ego(self, nodes: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.codebook[nodes].gather(1, self.codes[nodes]))

    @torch.no_grad()
    def rebin(self, propagated: torch.Tensor) -> None:
        self.codes.copy_(quartile_bins(propagated))


class NodeAwareQuantizer(Quantizer):
    layout = CodeLayout.PLANES2
    bits = 2
    scale_mode = ScaleMode.LEVELS
    needs_pretraining = True
    capturable = False  # after_step re-bins codes with data-dependent work

    def input_layer(
        self, n_nodes: int, dim: int, pretrained: torch.Tensor | None, propagated: torch.Tensor | None = None
    ) -> nn.Module | None:
        return NodeCodebookInput(n_nodes, dim, pretrained, bins_from=propagated)

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        return x  # the loss sees the propagated output; codebooks learn through propagation

    @torch.no_grad()
    def served(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        codes = quartile_bins(x)
        return bin_means(x, codes).gather(1, codes)

    def encoder(self, side: Side) -> None:
        return None  # a code's levels are the node's own table: no encoder of the representation alone

    def export(self, x: torch.Tensor, side: Side) -> ExportedCodes:
        with torch.no_grad():
            codes = quartile_bins(x)
            levels = bin_means(x, codes)
        return ExportedCodes(encode_planes2(codes.cpu().numpy()), as_numpy(levels))

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        inputs = model.inputs
        if isinstance(inputs, NodeCodebookInput):
            inputs.rebin(self.represent(model()))


GNAQ = Method(
    "gnaq",
    "GNAQ: 2-bit per-node codebooks, re-binned from propagation (needs fp pre-training)",
    NodeAwareQuantizer,
    encoder=None,
)
