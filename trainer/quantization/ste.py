"""1-bit baseline (HashGNN-style): b = sign(e) of the final embedding, straight-through gradients."""

from __future__ import annotations

import math
from typing import Any

import torch

from index.codes import CodeLayout
from index.encoders import SignEncoder
from trainer.quantization.base import Method, Quantizer, Side


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
    layout = CodeLayout.SIGN1
    bits = 1

    @property
    def score_scale(self) -> float:
        # ±1 codes give inner products up to ±d; 1/√d keeps the BPR logits in the sigmoid's useful range.
        return 1.0 / math.sqrt(self.dim)

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        return sign_ste(x)

    def encoder(self, side: Side) -> SignEncoder:
        return SignEncoder()


STE = Method("ste", "1-bit sign codes, straight-through gradients", SignSTEQuantizer, encoder=SignEncoder)
