"""HQ-GNN (trainer.quantization.hq): odd-level quantizer, EWGS gradients, δ from curvature, export.

The method's claims rest on three pieces that a training run would not expose when wrong: the forward
must pick the nearest odd level (and clip), the backward must follow the generalised STE formula
(δ-tilted, zero outside the range, LSQ step gradient), and δ must be the curvature ratio of DESIGN.md §5.
The exported codes must then rank exactly as the trained model, through the service's own index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainer.quantization.hq as hq
from index.bundle import Bundle
from index.codes import CodeLayout, dequantize
from index.encoders import OddLevelEncoder, odd_levels
from tests.conftest import TrainedBundle
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.export import export_bundle
from trainer.quantization.base import RefreshContext, Side
from trainer.quantization.hq import _EWGS, HessianAwareQuantizer, delta_from
from trainer.sampling import BPRSampler
from trainer.train import TrainResult, train

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def hq_config(epochs: int) -> TrainConfig:
    return TrainConfig.of(
        method="hq", bits=2, dim=32, epochs=epochs, batch_size=1024, lr=5e-3, eval_every=5, device="cpu"
    )


@pytest.fixture(scope="module")
def one_epoch(tiny_data: Dataset) -> TrainResult:
    return train(tiny_data, hq_config(epochs=1))


def batches_of(data: Dataset, size: int, count: int, seed: int = 0) -> list[Batch]:
    sampler = BPRSampler(data.train, torch.device("cpu"))
    return sampler.epoch(size, torch.Generator().manual_seed(seed))[:count]


# --- forward: nearest odd level ------------------------------------------------------------------


def test_odd_levels_one_bit() -> None:
    x = torch.tensor([-2.0, -0.3, 0.2, 0.7, 5.0])
    assert odd_levels(x, torch.tensor(0.5), 1).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_odd_levels_two_bits_nearest_and_clipped() -> None:
    # x / step = [-10, -2.4, -1.2, -0.2, 0.6, 1.6, 2.2, 3.2, 8]
    x = torch.tensor([-5.0, -1.2, -0.6, -0.1, 0.3, 0.8, 1.1, 1.6, 4.0])
    levels = odd_levels(x, torch.tensor(0.5), 3)
    assert levels.tolist() == [-3.0, -3.0, -1.0, -1.0, 1.0, 1.0, 3.0, 3.0, 3.0]


def test_ewgs_forward_is_step_times_level() -> None:
    x = torch.tensor([-5.0, -1.2, -0.1, 0.3, 1.1, 4.0], dtype=torch.float64)
    step = torch.tensor(0.5, dtype=torch.float64)
    out = _EWGS.apply(x, step, 3, 0.0)  # type: ignore[no-untyped-call]
    assert out.tolist() == [-1.5, -1.5, -0.5, 0.5, 1.5, 1.5]


# --- backward: generalised STE -------------------------------------------------------------------

# step 0.5, 2 bits (range ±1.5). x / step = [-4, -1.2, 0.2, 1.4, 2.8, 3]: the first is clipped (outside),
# the last sits exactly on the range's edge (inside). Levels [-3, -1, 1, 1, 3, 3], x_q = step·level,
# error (x − x_q)/(2·step) = [·, -0.1, -0.4, 0.2, -0.1, 0].
EWGS_X = [-2.0, -0.6, 0.1, 0.7, 1.4, 1.5]
EWGS_G = [1.0, 2.0, -1.0, -3.0, 0.5, 4.0]
# g·(1 + δ·sign(g)·error)·inside, by hand
EWGS_GX = {
    0.0: [0.0, 2.0, -1.0, -3.0, 0.5, 4.0],
    0.5: [0.0, 2.0 * 0.95, -1.0 * 1.2, -3.0 * 0.9, 0.5 * 0.95, 4.0],
}
# Σ g·((x_q − x)/step inside, level outside) = 1·(-3) + 2·0.2 − 1·0.8 − 3·(−0.4) + 0.5·0.2 + 4·0
EWGS_GSTEP = -2.1


@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_ewgs_backward_matches_the_formula(delta: float) -> None:
    x = torch.tensor(EWGS_X, dtype=torch.float64, requires_grad=True)
    step = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = _EWGS.apply(x, step, 3, delta)  # type: ignore[no-untyped-call]
    out.backward(torch.tensor(EWGS_G, dtype=torch.float64))
    assert x.grad is not None and step.grad is not None
    torch.testing.assert_close(x.grad, torch.tensor(EWGS_GX[delta], dtype=torch.float64))
    assert float(step.grad) == pytest.approx(EWGS_GSTEP, abs=1e-12)


def test_quantizer_backward_uses_the_delta_it_was_loaded_with() -> None:
    """δ is cached on the host: a state dict carrying δ must still reach the backward."""
    quantizer = HessianAwareQuantizer(6, 3, bits=2)
    with torch.no_grad():
        quantizer.item_step.fill_(0.5)
    x = torch.tensor([EWGS_X], dtype=torch.float64)
    grads = []
    for delta in (0.0, 0.5):
        state = quantizer.state_dict()
        state["delta"] = torch.tensor(delta)
        quantizer.load_state_dict(state)
        leaf = x.clone().requires_grad_(True)
        quantizer(leaf, "item").backward(torch.tensor([EWGS_G], dtype=torch.float64))
        assert leaf.grad is not None
        grads.append(leaf.grad[0])
    torch.testing.assert_close(grads[0], torch.tensor(EWGS_GX[0.0], dtype=torch.float64), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[1], torch.tensor(EWGS_GX[0.5], dtype=torch.float64), atol=1e-6, rtol=1e-6)


# --- δ from curvature ---------------------------------------------------------------------------


def test_delta_from_hand_case_and_clamp() -> None:
    grad = torch.tensor([1.0, -1.0, 1.0, -1.0])  # unbiased std = sqrt(4/3)
    assert delta_from(0.6, grad) == pytest.approx(0.6 / (3 * math.sqrt(4 / 3)), rel=1e-6)
    assert delta_from(-0.6, grad) == 0.0
    assert delta_from(float("nan"), grad) == 0.0
    assert delta_from(0.6, torch.ones(4)) == 0.0  # no spread


def test_estimate_delta_is_finite_and_non_negative(one_epoch: TrainResult, tiny_data: Dataset) -> None:
    torch.manual_seed(0)
    quantizer = one_epoch.quantizer
    assert isinstance(quantizer, HessianAwareQuantizer)
    delta = quantizer.estimate_delta(one_epoch.model, batches_of(tiny_data, 1024, 2))
    assert math.isfinite(delta) and delta >= 0.0


def exact_trace(
    loss_fn: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    variables: Sequence[torch.Tensor],
    *,
    probes: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[float, torch.Tensor]:
    """hutchinson_trace's contract without the noise: the full Hessian of a few hundred variables."""
    shapes = [v.shape for v in variables]
    sizes = [v.numel() for v in variables]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [p.reshape(s) for p, s in zip(torch.split(flat, sizes), shapes, strict=True)]
        return loss_fn(parts)

    point = torch.cat([v.detach().reshape(-1) for v in variables]).double()
    hessian = torch.autograd.functional.hessian(flat_loss, point)  # type: ignore[no-untyped-call]
    grad = torch.autograd.functional.jacobian(flat_loss, point)  # type: ignore[no-untyped-call]
    return float(hessian.diagonal().sum()), grad


def test_estimate_delta_is_mean_curvature_over_three_gradient_stds(
    one_epoch: TrainResult, tiny_data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an exact trace, δ equals the closed form of BPR's Hessian diagonal w.r.t. z = x_q/(2·step).

    m = c⟨z_u, z_p − z_n⟩ with c = 4·s_u·s_i; L = mean softplus(−m); the diagonal is
    σ(m)σ(−m)·c²·(z_p − z_n)² for z_u and σ(m)σ(−m)·c²·z_u² for z_p and z_n, over the batch size B.
    """
    monkeypatch.setattr(hq, "hutchinson_trace", exact_trace)
    quantizer, model = one_epoch.quantizer, one_epoch.model
    assert isinstance(quantizer, HessianAwareQuantizer)
    batches = batches_of(tiny_data, 3, 3, seed=1)  # 3 × 3 triples × 32 dims × 3 roles = 864 variables
    got = quantizer.estimate_delta(model, batches)

    with torch.no_grad():
        users, items = quantizer.node_representations(model)
        s_u = float(quantizer.user_step.abs()) + 1e-8
        s_i = float(quantizer.item_step.abs()) + 1e-8
        c = 4 * s_u * s_i
        trace, count, grads = 0.0, 0, []
        for u, p, n in batches:
            z_u = odd_levels(users[u], torch.tensor(s_u), 3).double() / 2
            z_p = odd_levels(items[p], torch.tensor(s_i), 3).double() / 2
            z_n = odd_levels(items[n], torch.tensor(s_i), 3).double() / 2
            margin = c * (z_u * (z_p - z_n)).sum(dim=1)
            weight = torch.sigmoid(margin) * torch.sigmoid(-margin)
            size = u.numel()
            trace += float((weight * c**2 * ((z_p - z_n).pow(2) + 2 * z_u.pow(2)).sum(dim=1)).sum()) / size
            pull = (torch.sigmoid(-margin) * c / size)[:, None]
            grads += [(-pull * (z_p - z_n)).reshape(-1), (-pull * z_u).reshape(-1), (pull * z_u).reshape(-1)]
            count += 3 * z_u.numel()
        expected = (trace / count) / (3 * float(torch.cat(grads).std()))
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-4)


def test_refresh_sets_delta_only_every_delta_every_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    quantizer = HessianAwareQuantizer(6, 3, bits=2, delta_every=3, delta_batches=2)
    with torch.no_grad():
        quantizer.item_step.fill_(0.5)
    seen: list[int] = []

    def fake_estimate(model: nn.Module, batches: Sequence[Batch]) -> float:
        seen.append(len(batches))
        return 0.5 * len(seen)

    monkeypatch.setattr(quantizer, "estimate_delta", fake_estimate)
    quantizer.delta.fill_(7.0)
    quantizer(torch.zeros(1, 6), "item")  # a training step before the refresh caches δ = 7 on the host
    batches = [(torch.zeros(1, dtype=torch.long),) * 3] * 5
    logged = []
    for epoch in range(6):
        logged.append(quantizer.refresh(RefreshContext(model=nn.Identity(), batches=batches, epoch=epoch)))
        expected_delta = {0: 7.0, 1: 7.0, 2: 0.5, 3: 0.5, 4: 0.5, 5: 1.0}[epoch]
        assert float(quantizer.delta) == expected_delta
    assert logged == [{}, {}, {"delta": 0.5}, {}, {}, {"delta": 1.0}]
    assert seen == [2, 2]  # only the first delta_batches batches
    # The backward after the refresh tilts by the new δ = 1.0.
    x = torch.tensor([EWGS_X], dtype=torch.float64, requires_grad=True)
    quantizer(x, "item").backward(torch.tensor([EWGS_G], dtype=torch.float64))
    assert x.grad is not None
    expected = [0.0, 2.0 * 0.9, -1.0 * 1.4, -3.0 * 0.8, 0.5 * 0.9, 4.0]
    torch.testing.assert_close(x.grad[0], torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


# --- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "layout"), [(2, CodeLayout.PLANES2), (1, CodeLayout.SIGN1)])
def test_exported_codes_dequantize_to_the_odd_levels(bits: int, layout: CodeLayout) -> None:
    quantizer = HessianAwareQuantizer(32, 3, bits=bits)
    assert quantizer.layout is layout
    with torch.no_grad():
        quantizer.item_step.fill_(0.25)
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    codes = quantizer.export(x, "item").codes
    assert quantizer.export(x, "item").scales is None
    levels = odd_levels(x, torch.tensor(0.25), 2**bits - 1).numpy()
    assert set(np.unique(levels)) == ({-3.0, -1.0, 1.0, 3.0} if bits == 2 else {-1.0, 1.0})
    np.testing.assert_array_equal(dequantize(codes, layout, 32), levels)
    # serving (model selection) ranks by the same integer levels; the training forward is levels × step
    np.testing.assert_array_equal(quantizer.served(x, "item").numpy(), levels)
    np.testing.assert_allclose(quantizer(x, "item").detach().numpy(), 0.25 * levels, rtol=1e-6)


@pytest.mark.parametrize(("bits", "user_bits"), [(1, None), (2, None), (1, 2)])
def test_the_numpy_encoder_codes_what_the_torch_quantizer_serves(bits: int, user_bits: int | None) -> None:
    """One rounding: the encoder's codes (the export's, and a new user's at serving time) dequantize to the levels
    the torch quantizer ranks by, bit for bit, ties and clipped values included."""
    quantizer = HessianAwareQuantizer(16, 3, bits=bits, user_bits=user_bits)
    generator = torch.Generator().manual_seed(4)
    users, items = torch.randn(200, 16, generator=generator), torch.randn(300, 16, generator=generator)
    quantizer.initialise_range(users, items)
    with torch.no_grad():  # values on the rounding boundaries (x / step odd: (x / step + m) / 2 halfway) and far out
        users[:, :8] = torch.randint(-9, 10, (200, 8), generator=generator) * quantizer._step("user")
        items[:, :8] = torch.randint(-9, 10, (300, 8), generator=generator) * quantizer._step("item")
    sides: list[tuple[Side, torch.Tensor]] = [("user", users), ("item", items)]
    for side, x in sides:
        encoder = quantizer.encoder(side)
        codes = encoder.encode(x.numpy())
        assert encoder.layout is (quantizer.user_layout if side == "user" else quantizer.layout)
        served = quantizer.served(x, side).numpy()
        np.testing.assert_array_equal(dequantize(codes, encoder.layout, 16), served)
        np.testing.assert_array_equal(codes, quantizer.export(x, side).codes)


def test_trained_hq2_bundle_holds_plain_two_bit_codes(hq2_bundle: TrainedBundle) -> None:
    bundle = Bundle.load(hq2_bundle.root)
    assert bundle.layout is CodeLayout.PLANES2 and bundle.manifest.bits == 2 and bundle.dim == 32
    assert bundle.manifest.scale_mode is None and bundle.item_scales is None
    assert bundle.manifest.training["config"]["bits"] == 2
    assert bundle.manifest.metrics["recall@20"] > 0.1  # a trained model, not an empty ranking


def test_trained_hq2_device_path_equals_served_path(hq2_bundle: TrainedBundle) -> None:
    """Model selection (device path) must rank as the service does; step_u·step_i·<l_u, l_i> was once rounded."""
    for name, value in hq2_bundle.report.test_device.items():
        assert hq2_bundle.report.test_served[name] == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("bits", [1, 2])
def test_item_scales_multiply_item_levels_by_their_magnitude(bits: int) -> None:
    torch.manual_seed(3)
    quantizer = HessianAwareQuantizer(8, 3, bits=bits, item_scales=True)
    users, items = torch.randn(5, 8), torch.randn(6, 8) * torch.arange(1, 7)[:, None]
    quantizer.initialise_range(users, items)
    magnitude = items.abs().mean(dim=1, keepdim=True)
    levels = odd_levels(items, quantizer._step("item"), quantizer.max_level)
    assert torch.allclose(quantizer(items, "item"), levels * quantizer._step("item") * magnitude)
    assert torch.equal(quantizer.served(users, "user"), odd_levels(users, quantizer._step("user"), quantizer.max_level))
    exported = quantizer.export(items, "item")
    assert exported.scales is not None and exported.scales.shape == (6, 1) and exported.scales.dtype == np.float32
    layout = CodeLayout.SIGN1 if bits == 1 else CodeLayout.PLANES2
    back = dequantize(exported.codes, layout, 8, exported.scales, quantizer.scale_mode)
    assert np.allclose(back, quantizer.served(items, "item").numpy(), atol=1e-6)
    assert quantizer.export(users, "user").scales is None  # a user's scale would not change its ranking


def test_item_scales_train_and_serve_as_evaluated(tiny_data: Dataset, tmp_path: Path) -> None:
    """The bundle holds one float per item; the served path (Hamming candidates re-ranked with the scales, which
    cover this small catalogue) gives the device path's metrics."""
    config = TrainConfig.of(method="hq", bits=1, item_scales=True, dim=16, epochs=6, eval_every=3, device="cpu")
    result = train(tiny_data, config)
    report = export_bundle(result, tiny_data, config, tmp_path)
    bundle = Bundle.load(tmp_path)
    assert bundle.item_scales is not None and bundle.item_scales.shape == (tiny_data.n_items, 1)
    assert bundle.user_scales is None and report.item_bytes == 16 / 8 + 4
    for name, value in report.test_device.items():
        assert report.test_served[name] == pytest.approx(value, abs=1e-9)


def test_user_bits_give_users_two_bit_levels_and_items_signs() -> None:
    """Asymmetric codes: each side is quantized and exported at its own bits, and served values are the codes'."""
    quantizer = HessianAwareQuantizer(32, 3, bits=1, user_bits=2)
    users, items = torch.randn(40, 32, generator=torch.Generator().manual_seed(1)), torch.randn(50, 32)
    quantizer.initialise_range(users, items)
    assert quantizer.layout is CodeLayout.SIGN1 and quantizer.user_layout is CodeLayout.PLANES2
    served_users, served_items = quantizer.served(users, "user").numpy(), quantizer.served(items, "item").numpy()
    assert set(np.unique(served_users)) == {-3.0, -1.0, 1.0, 3.0}
    assert set(np.unique(served_items)) == {-1.0, 1.0}
    user_codes, item_codes = quantizer.export(users, "user").codes, quantizer.export(items, "item").codes
    assert user_codes.shape == (40, 8) and item_codes.shape == (50, 4)
    np.testing.assert_array_equal(dequantize(user_codes, CodeLayout.PLANES2, 32), served_users)
    np.testing.assert_array_equal(dequantize(item_codes, CodeLayout.SIGN1, 32), served_items)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 2, "user_bits": 1}, "at least the items' bits"),
        ({"bits": 1, "user_bits": 3}, "1 or 2 bits"),
        ({"bits": 1, "user_bits": 2, "item_scales": True}, "does not combine"),
    ],
)
def test_user_bits_that_cannot_be_served_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HessianAwareQuantizer(16, 3, **kwargs)  # type: ignore[arg-type]


def test_trained_asymmetric_bundle_is_served_as_it_was_selected(asymmetric_bundle: TrainedBundle) -> None:
    """The bundle keeps 1-bit items and 2-bit users; the index ranks exactly as the device path chose the epoch,
    and a new user's cold-start code has the users' layout."""
    bundle = Bundle.load(asymmetric_bundle.root)
    assert bundle.layout is CodeLayout.SIGN1 and bundle.user_layout is CodeLayout.PLANES2
    assert bundle.item_codes.shape[1] == 4 and bundle.user_codes.shape[1] == 8  # d = 32
    assert asymmetric_bundle.report.item_bytes == 4.0
    for name, value in asymmetric_bundle.report.test_device.items():
        assert asymmetric_bundle.report.test_served[name] == pytest.approx(value, abs=1e-12)
    assert bundle.manifest.metrics["recall@20"] > 0.1
    assert bundle.cold_start is not None and isinstance(bundle.cold_start.encoder, OddLevelEncoder)
    assert bundle.cold_start.encoder.max_level == 3
