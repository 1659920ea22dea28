"""BiGeaR (trainer.quantization.bigear): weighted layer concatenation, α·sign segments, Gaussian-delta
gradient, and exported sign bits + per-segment scales that dequantize to the training forward.

These are the pieces the served ranking depends on: a wrong λ, α or segment layout would still train,
but the bundle would then score differently from the model that was selected.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from index.codes import CodeLayout, ScaleMode, dequantize
from trainer.quantization.bigear import BiGeaRQuantizer, sign_gaussian

DIM, LAYERS = 8, 3


def test_represent_concatenates_layers_weighted_by_l_plus_one_over_k_plus_one() -> None:
    quantizer = BiGeaRQuantizer(3, 3)
    layers = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3) + 1  # [K+1, n, d]
    rep = quantizer.represent(layers)
    assert rep.shape == (2, 12) and quantizer.code_dim == 12
    for layer, weight in enumerate([0.25, 0.5, 0.75, 1.0]):
        torch.testing.assert_close(rep[:, 3 * layer : 3 * layer + 3], weight * layers[layer])
    # node 1, layer 2: values 16, 17, 18 weighted by 3/4
    assert rep[1, 6:9].tolist() == [12.0, 12.75, 13.5]


def test_forward_is_mean_abs_times_sign_per_segment() -> None:
    quantizer = BiGeaRQuantizer(DIM, LAYERS)
    x = torch.randn(5, DIM * (LAYERS + 1), generator=torch.Generator().manual_seed(0))
    x[0, 3] = 0.0  # zero codes as −1, like encode_sign1
    out = quantizer(x, "item")
    for row in range(5):
        for segment in range(LAYERS + 1):
            part = x[row, segment * DIM : (segment + 1) * DIM]
            alpha = part.abs().mean()
            signs = torch.where(part > 0, 1.0, -1.0)
            torch.testing.assert_close(out[row, segment * DIM : (segment + 1) * DIM], alpha * signs)
    assert out[0, 3] == -x[0, :DIM].abs().mean()


def test_sign_surrogate_gradient_is_the_clamped_gaussian() -> None:
    # Row 0: small spread, a = 1/std ≈ 7, so a/√π > 1 near zero and the clamp at 1 applies.
    # Row 1: wide spread, a ≈ 0.4, no clamping anywhere.
    rows = np.array([[0.0, 0.1, -0.1, 0.2, -0.2, 0.05], [-3.0, -1.0, 0.0, 1.0, 2.0, 4.0]])
    upstream = np.array([[1.0, -2.0, 0.5, 3.0, 1.0, -1.0], [2.0, 1.0, -1.0, 0.5, 1.0, 4.0]])
    x = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    out = sign_gaussian(x)
    assert out.tolist() == [[-1, 1, -1, 1, -1, 1], [-1, -1, -1, 1, 1, 1]]
    out.backward(torch.tensor(upstream))  # type: ignore[no-untyped-call]
    assert x.grad is not None

    a = 1.0 / rows.std(axis=1, ddof=1, keepdims=True)
    gaussian = a / math.sqrt(math.pi) * np.exp(-((a * rows) ** 2))
    expected = upstream * np.minimum(1.0, gaussian)
    assert (gaussian[0] > 1).sum() >= 3 and (gaussian[1] < 1).all()  # both regimes are exercised
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


def test_export_is_sign_bits_and_segment_scales_that_dequantize_to_the_forward() -> None:
    quantizer = BiGeaRQuantizer(DIM, LAYERS)
    layers = torch.randn(LAYERS + 1, 9, DIM, generator=torch.Generator().manual_seed(1))
    rep = quantizer.represent(layers)
    exported = quantizer.export(rep, "user")
    assert exported.codes.dtype == np.uint8 and exported.codes.shape == (9, DIM * (LAYERS + 1) // 8)
    assert exported.scales is not None and exported.scales.shape == (9, LAYERS + 1)
    # one scale per node and layer: the mean |x| of that (λ-weighted) segment
    np.testing.assert_allclose(exported.scales, rep.reshape(9, LAYERS + 1, DIM).abs().mean(dim=2).numpy(), rtol=1e-6)
    served = dequantize(exported.codes, CodeLayout.SIGN1, quantizer.code_dim, exported.scales, ScaleMode.SEGMENT)
    np.testing.assert_allclose(served, quantizer(rep, "user").numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(served, quantizer.served(rep, "user").numpy(), rtol=1e-6, atol=0)
