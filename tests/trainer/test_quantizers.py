"""The 1-bit straight-through estimator: forward is the sign code, backward its clipped identity."""

from __future__ import annotations

import numpy as np
import torch

from index.codes import CodeLayout, dequantize
from trainer.quantization import make_quantizer
from trainer.quantization.ste import SignSTEQuantizer


def test_sign_ste_forward_and_backward() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    q = SignSTEQuantizer(dim=6, layers=3)(x, "user")
    assert q.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    q.backward(upstream)
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]  # zeroed where |x| > 1


def test_encoded_codes_dequantize_to_the_training_forward() -> None:
    quantizer = make_quantizer("ste", 16, 3)
    x = torch.randn(10, 16)
    codes = quantizer.export(x, "item").codes
    np.testing.assert_array_equal(dequantize(codes, CodeLayout.SIGN1, 16), quantizer(x, "item").numpy())


def test_full_precision_is_the_identity() -> None:
    quantizer = make_quantizer("fp", 8, 3)
    x = torch.randn(3, 8)
    assert torch.equal(quantizer(x, "user"), x)
    np.testing.assert_array_equal(quantizer.export(x, "user").codes, x.numpy())
