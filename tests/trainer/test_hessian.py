"""Hutchinson's trace estimate (trainer.hessian), checked on quadratics whose Hessian is known.

HQ-GNN's δ is only as good as this estimate: on L = ½ xᵀAx the Hessian is A, so the estimate must
approach Tr(A), be exact for a diagonal A (vᵀAv = Σ A_ii v_i² = Tr A for Rademacher v), span several
variables as one vector, and return the gradient A x.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from trainer.hessian import hutchinson_trace


def make_loss(matrix: torch.Tensor) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    def loss(variables: Sequence[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([v.reshape(-1) for v in variables])
        return 0.5 * flat @ matrix @ flat

    return loss


def symmetric(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return torch.diag(torch.arange(1, n + 1, dtype=torch.float64)) + 0.3 * (noise + noise.T)


def test_many_probes_approach_the_trace_of_a_dense_matrix() -> None:
    matrix = symmetric(30, seed=0)
    x = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    trace, _ = hutchinson_trace(make_loss(matrix), [x], probes=2000, generator=torch.Generator().manual_seed(2))
    exact = float(torch.trace(matrix))
    assert trace == pytest.approx(exact, rel=0.02)
    # One probe is noisy for a dense matrix: the estimate is not trivially the trace.
    single, _ = hutchinson_trace(make_loss(matrix), [x], probes=1, generator=torch.Generator().manual_seed(3))
    assert single != pytest.approx(exact, rel=1e-6)


def test_a_diagonal_hessian_is_estimated_exactly_with_one_probe() -> None:
    diagonal = torch.tensor([0.5, -2.0, 3.0, 7.25, 0.0, 1.5], dtype=torch.float64)
    x = torch.tensor([1.0, -1.0, 2.0, 0.5, 3.0, -4.0], dtype=torch.float64)
    for seed in range(5):
        trace, _ = hutchinson_trace(
            make_loss(torch.diag(diagonal)), [x], probes=1, generator=torch.Generator().manual_seed(seed)
        )
        assert trace == pytest.approx(10.25, abs=1e-12)


def test_the_gradient_is_a_x_flattened_over_all_variables() -> None:
    matrix = symmetric(30, seed=4)
    first = torch.randn(10, dtype=torch.float64)
    second = torch.randn(4, 5, dtype=torch.float64)
    trace, grad = hutchinson_trace(
        make_loss(matrix), [first, second], probes=1000, generator=torch.Generator().manual_seed(5)
    )
    flat = torch.cat([first, second.reshape(-1)])
    torch.testing.assert_close(grad, matrix @ flat)
    # The trace spans both variables (the full 30×30 Hessian), not only the first block.
    assert trace == pytest.approx(float(torch.trace(matrix)), rel=0.02)
    assert abs(trace - float(torch.trace(matrix[:10, :10]))) > 100
    # The caller's tensors are left untouched (no grad attached to them).
    assert first.grad is None and not first.requires_grad


def test_the_same_generator_seed_gives_the_same_estimate() -> None:
    matrix = symmetric(12, seed=6)
    x = torch.randn(12, dtype=torch.float64)
    runs = [
        hutchinson_trace(make_loss(matrix), [x], probes=3, generator=torch.Generator().manual_seed(7))[0]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
