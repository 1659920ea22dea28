"""Hutchinson's estimator of a Hessian trace, Tr(H) ≈ E[vᵀ H v] with Rademacher v, by double backprop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def hutchinson_trace(
    loss_fn: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    variables: Sequence[torch.Tensor],
    *,
    probes: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[float, torch.Tensor]:
    """Estimate Tr(∂²L/∂x²) over ``variables``; also return the flat gradient ∂L/∂x at that point."""
    leaves = [v.detach().requires_grad_(True) for v in variables]
    loss = loss_fn(leaves)
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    total = 0.0
    for _ in range(probes):
        vs = [
            torch.randint(0, 2, leaf.shape, device=leaf.device, generator=generator).to(leaf.dtype) * 2 - 1
            for leaf in leaves
        ]
        hvs = torch.autograd.grad(grads, leaves, grad_outputs=vs, retain_graph=True)
        total += float(sum((v * hv).sum() for v, hv in zip(vs, hvs, strict=True)))
    flat_grad = torch.cat([g.detach().reshape(-1) for g in grads])
    return total / probes, flat_grad
