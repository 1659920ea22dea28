"""Quantizers turn final embeddings into the codes the index serves.

Each quantizer has two faces: ``forward`` is the differentiable surrogate used in the training
loss (it returns the *dequantized* values, so the loss sees exactly what serving scores), and
``encode`` produces the packed codes that go into a bundle. New methods register in ``QUANTIZERS``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from index.codes import CodeLayout, encode_sign1

Side = Literal["user", "item"]


class Quantizer(nn.Module):
    """Base class: identity (full precision)."""

    layout: CodeLayout = CodeLayout.FLOAT32
    bits: int = 32

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @property
    def score_scale(self) -> float:
        """Multiplier on inner products inside the BPR loss; ranking-invariant, it only sets the temperature."""
        return 1.0

    def forward(self, embeddings: torch.Tensor, side: Side) -> torch.Tensor:
        return embeddings

    def encode(self, embeddings: torch.Tensor, side: Side) -> npt.NDArray[Any]:
        return embeddings.detach().float().cpu().numpy().astype(np.float32)


class _SignSTE(torch.autograd.Function):
    """sign(x) ∈ {−1, +1} forward (0 ↦ −1, as the bit packer does); identity backward, zeroed where |x| > 1."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        signs: torch.Tensor = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
        return signs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        clipped: torch.Tensor = grad * (x.abs() <= 1).to(grad.dtype)
        return clipped


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _SignSTE.apply(x)  # type: ignore[no-untyped-call]
    return out


class SignSTEQuantizer(Quantizer):
    """1-bit baseline (HashGNN-style): b = sign(e) of the final embedding, straight-through gradients."""

    layout = CodeLayout.SIGN1
    bits = 1

    @property
    def score_scale(self) -> float:
        # ±1 codes give inner products up to ±d; 1/√d keeps the BPR logits in the sigmoid's useful range.
        return 1.0 / math.sqrt(self.dim)

    def forward(self, embeddings: torch.Tensor, side: Side) -> torch.Tensor:
        return sign_ste(embeddings)

    def encode(self, embeddings: torch.Tensor, side: Side) -> npt.NDArray[Any]:
        return encode_sign1(embeddings.detach().float().cpu().numpy())


QUANTIZERS: dict[str, type[Quantizer]] = {
    "fp": Quantizer,
    "ste": SignSTEQuantizer,
}


def make_quantizer(method: str, dim: int) -> Quantizer:
    try:
        return QUANTIZERS[method](dim)
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(QUANTIZERS)}") from None
