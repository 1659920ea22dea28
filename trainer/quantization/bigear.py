"""BiGeaR-style 1-bit codes (KDD'22): every layer binarised with a per-node scale, layers concatenated.

Representation: [λ_0 x⁰ | … | λ_K x^K] with λ_l = (l+1)/(K+1). Each segment is coded as α · sign(x)
with α = ‖x‖₁/d per node and layer, so ⟨q_u, q_i⟩ = Σ_l λ_l² α_u,l α_i,l ⟨s_u,l, s_i,l⟩. The sign's
gradient is a Gaussian approximation of the Dirac delta, (a/√π)·exp(−(a x)²) clamped to ≤ 1, with a
set from each segment's spread. The bundle holds the (K+1)·d sign bits and the [n, K+1] scales; the
index takes Hamming candidates and re-ranks them with the scales.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from index.codes import CodeLayout, ScaleMode, encode_sign1
from trainer.quantization.base import ExportedCodes, Method, Quantizer, Side, as_numpy


class _SignGaussian(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sharpness: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, sharpness)
        signs: torch.Tensor = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
        return signs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, a = ctx.saved_tensors
        surrogate = (a / math.sqrt(math.pi) * torch.exp(-((a * x) ** 2))).clamp(max=1.0)
        return grad * surrogate, None


def sign_gaussian(x: torch.Tensor) -> torch.Tensor:
    sharpness = 1.0 / (x.detach().std(dim=1, keepdim=True) + 1e-8)
    out: torch.Tensor = _SignGaussian.apply(x, sharpness)  # type: ignore[no-untyped-call]
    return out


class BiGeaRQuantizer(Quantizer):
    layout = CodeLayout.SIGN1
    bits = 1
    scale_mode = ScaleMode.SEGMENT

    @property
    def code_dim(self) -> int:
        return self.dim * (self.layers + 1)

    def represent(self, layers: torch.Tensor) -> torch.Tensor:
        weights = torch.arange(1, self.layers + 2, device=layers.device, dtype=layers.dtype) / (self.layers + 1)
        weighted = layers * weights[:, None, None]
        return weighted.permute(1, 0, 2).reshape(layers.shape[1], -1)

    def _segments(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.layers + 1, self.dim)

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        segments = self._segments(x)
        scales = segments.abs().mean(dim=2, keepdim=True)
        signs = sign_gaussian(segments.reshape(-1, self.dim)).reshape(segments.shape)
        return (scales * signs).reshape(x.shape)

    def encoder(self, side: Side) -> None:
        return None  # a code's scales are per layer and node: no encoder of the representation alone

    def export(self, x: torch.Tensor, side: Side) -> ExportedCodes:
        scales = self._segments(x.detach()).abs().mean(dim=2)
        return ExportedCodes(encode_sign1(as_numpy(x)), as_numpy(scales))


BIGEAR = Method(
    "bigear",
    "1-bit codes per layer with per-node scales, Gaussian-delta gradients",
    BiGeaRQuantizer,
    encoder=None,
)
