"""HQ-GNN: Hessian-aware b-bit quantization of the final embeddings (DESIGN.md §5).

Forward: a uniform symmetric quantizer with odd levels, x_q = step · l, l ∈ {−m, …, −1, 1, …, m},
m = 2^b − 1, over a learnable range (initialised at ±3σ). Working in z = x / (2·step), where levels are
one apart, the generalised straight-through estimator is

    g_z = g_q ⊙ (1 + δ · sign(g_q) ⊙ (z − z_q)),   zero outside the range,

and δ = max(0, (Tr(H)/N) / (3·std(g_q))), with Tr(H) of the loss w.r.t. the quantized z estimated by
Hutchinson's method on a few batches, re-estimated every few epochs (δ = 0 at the start).

A global step per side scales every score by the same factor, so the bundle's plain 1-bit (``sign1``)
or 2-bit (``planes2``) codes rank exactly as the trained model does. The rounding to odd levels is
``index.encoders.odd_levels``, the one the bundle's encoder (``OddLevelEncoder``) codes with: training, the
exported codes and a new user's code at serving time round alike.

With ``item_scales`` each item's levels are also multiplied by its own magnitude, α_i = mean |x_i|, in training
as in serving: low-bit codes keep the direction of an item but lose its norm, which in LightGCN carries much of its
popularity. The bundle then holds one float per item beside its code, and the index re-ranks Hamming candidates
with it (as for BiGeaR's scales); users need none, a user's scale does not change its ranking.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import nn

from index.codes import CodeLayout, ScaleMode
from index.encoders import OddLevelEncoder, odd_levels
from trainer.hessian import hutchinson_trace
from trainer.loss import bpr
from trainer.quantization.base import ExportedCodes, Method, Quantizer, RefreshContext, Side, as_numpy


class _EWGS(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, step: torch.Tensor, max_level: int, delta: float) -> torch.Tensor:
        level = odd_levels(x, step, max_level)
        x_q = level * step
        ctx.save_for_backward(x, x_q, level, step)
        ctx.max_level, ctx.delta = max_level, delta
        return x_q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, x_q, level, step = ctx.saved_tensors
        inside = (x.abs() <= ctx.max_level * step).to(grad.dtype)
        error = (x - x_q) / (2 * step)  # z − z_q, in [−½, ½] inside the range
        grad_x = grad * (1 + ctx.delta * torch.sign(grad) * error) * inside
        # LSQ-style range gradient: ∂x_q/∂step = (x_q − x)/step inside, the clipped level outside.
        grad_step = (grad * torch.where(inside > 0, (x_q - x) / step, level)).sum().reshape(step.shape)
        return grad_x, grad_step, None, None


class HessianAwareQuantizer(Quantizer):
    """``hq`` with b = 1 (sign codes) or b = 2 (2-bit planes).

    ``user_bits`` above ``bits`` gives asymmetric codes: users keep 2-bit levels while items keep signs. The
    index stores only the items' codes, so their bytes stay those of ``bits``, and a user's extra plane still
    scores exactly (index.codes.PAIRINGS); a 1-bit item code loses less against a finer query than against
    another sign."""

    delta: torch.Tensor
    initialised: torch.Tensor

    def __init__(
        self,
        dim: int,
        layers: int,
        *,
        bits: int,
        user_bits: int | None = None,
        item_scales: bool = False,
        delta_every: int = 5,
        delta_batches: int = 8,
        delta_probes: int = 16,
    ) -> None:
        super().__init__(dim, layers)
        HQ.check(bits=bits, user_bits=user_bits, item_scales=item_scales)
        user_bits = user_bits or bits
        self.bits = bits
        self.user_bits = user_bits
        self.item_scales = item_scales
        self.scale_mode = ScaleMode.SEGMENT if item_scales else None  # one segment: one scale per item
        self.layout = HQ.widths[bits]
        self.max_level: int = 2**bits - 1  # the items' top level (and the users', unless user_bits says more)
        self.user_max_level: int = 2**user_bits - 1
        self.delta_every = delta_every
        self.delta_batches = delta_batches
        # vᵀHv is noisy (BPR's Hessian has large off-diagonal terms): average many probes over several batches.
        self.delta_probes = delta_probes
        self.user_step = nn.Parameter(torch.ones(()))
        self.item_step = nn.Parameter(torch.ones(()))
        self.register_buffer("delta", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        # Host copies of buffers, so the training step never waits on the device to read them.
        self._delta_value: float | None = None
        self._range_ready = False

    @classmethod
    def build(cls, dim: int, layers: int, *, bits: int, user_bits: int, item_scales: bool) -> Self:
        return cls(dim, layers, bits=bits, user_bits=user_bits, item_scales=item_scales)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._delta_value, self._range_ready = None, False
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def buffers_synced(self) -> None:
        self._delta_value = float(self.delta)  # rank 0's estimate, not this rank's own (at an epoch end)

    def graph_constants(self) -> tuple[float, ...]:
        return (-1.0 if self._delta_value is None else self._delta_value,)

    @property
    def user_layout(self) -> CodeLayout:
        return HQ.widths[self.user_bits]

    def _step(self, side: Side) -> torch.Tensor:
        return (self.user_step if side == "user" else self.item_step).abs() + 1e-8

    def _top(self, side: Side) -> int:
        return self.user_max_level if side == "user" else self.max_level

    @torch.no_grad()
    def initialise_range(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Range ±3σ of each side's values; the step is the range over the top level."""
        self.user_step.copy_(3 * users.std() / self.user_max_level)
        self.item_step.copy_(3 * items.std() / self.max_level)
        self.initialised.fill_(True)

    def node_representations(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = super().node_representations(model)
        if not self._range_ready:
            if not bool(self.initialised):
                self.initialise_range(users.detach(), items.detach())
            self._range_ready = True
        return users, items

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        if self._delta_value is None:
            self._delta_value = float(self.delta)
        out: torch.Tensor = _EWGS.apply(x, self._step(side), self._top(side), self._delta_value)  # type: ignore[no-untyped-call]
        return out * magnitude(x) if self.item_scales and side == "item" else out

    @torch.no_grad()
    def served(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        """The integer levels (times the item's magnitude with ``item_scales``): serving drops the global steps,
        which scale every score alike."""
        level = odd_levels(x, self._step(side), self._top(side))
        return level * magnitude(x) if self.item_scales and side == "item" else level

    def encoder(self, side: Side) -> OddLevelEncoder:
        """This side's step and top level, as the bundle's encoder codes with them."""
        return OddLevelEncoder(float(self._step(side).detach()), self._top(side))

    def export(self, x: torch.Tensor, side: Side) -> ExportedCodes:
        """The encoder's codes, and with ``item_scales`` each item's magnitude."""
        codes = super().export(x, side)
        if not (self.item_scales and side == "item"):
            return codes
        with torch.no_grad():
            return dataclasses.replace(codes, scales=as_numpy(magnitude(x)))

    def refresh(self, context: RefreshContext) -> dict[str, float]:
        if (context.epoch + 1) % self.delta_every:
            return {}
        delta = self.estimate_delta(context.model, context.batches[: self.delta_batches])
        self.delta.fill_(delta)
        self._delta_value = delta
        return {"delta": delta}

    def estimate_delta(
        self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> float:
        """δ = max(0, (Tr(H)/N) / (3·std(g))) with H, g of the BPR loss w.r.t. the quantized z = x_q / (2·step)."""
        with torch.no_grad():
            users, items = self.node_representations(model)
            user_step, item_step = 2 * self._step("user"), 2 * self._step("item")
        traces, grads, count = 0.0, [], 0
        for batch_users, positives, negatives in batches:
            with torch.no_grad():
                z = [
                    self(users[batch_users], "user") / user_step,
                    self(items[positives], "item") / item_step,
                    self(items[negatives], "item") / item_step,
                ]

            def loss(zs: Sequence[torch.Tensor]) -> torch.Tensor:
                return bpr(zs[0] * user_step, zs[1] * item_step, zs[2] * item_step, self.score_scale)

            trace, grad = hutchinson_trace(loss, z, probes=self.delta_probes)
            traces += trace
            grads.append(grad)
            count += grad.numel()
        return delta_from(traces / count, torch.cat(grads))


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """Each row's mean absolute value, ``[n, 1]``: the scale ``item_scales`` keeps per item."""
    return x.abs().mean(dim=1, keepdim=True)


def delta_from(mean_curvature: float, grad: torch.Tensor) -> float:
    """EWGS's δ from the mean Hessian diagonal and the gradient spread."""
    spread = float(grad.std())
    if not math.isfinite(mean_curvature) or spread == 0.0:
        return 0.0
    return max(0.0, mean_curvature / (3 * spread))


HQ = Method(
    "hq",
    "HQ-GNN: b-bit (1 or 2) uniform codes, Hessian-aware generalised STE",
    HessianAwareQuantizer,
    layouts={1: CodeLayout.SIGN1, 2: CodeLayout.PLANES2},
    user_bits=True,
    item_scales=True,
    encoder=OddLevelEncoder,
)
