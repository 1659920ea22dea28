"""LightGCN's memory-lean layer mean gives the stacked mean's values and gradients."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.data import Dataset
from trainer.graph import normalized_adjacency, propagate, to_torch_sparse
from trainer.model import LightGCN, layer_mean


def test_the_running_layer_mean_matches_the_stacked_mean_and_its_gradient(tiny_data: Dataset) -> None:
    adjacency = to_torch_sparse(normalized_adjacency(tiny_data.train), torch.device("cpu"))
    torch.manual_seed(0)
    model = LightGCN(tiny_data.n_users, tiny_data.n_items, 8, 3, adjacency)
    weights = torch.randn(tiny_data.n_users + tiny_data.n_items, 8)
    grads = []
    for mean in (lambda: model().mean(dim=0), model.layer_mean):
        model.zero_grad(set_to_none=True)
        out = mean()
        (out * weights).sum().backward()  # type: ignore[no-untyped-call]
        grads.append((out.detach(), next(model.parameters()).grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][1] is not None and grads[0][1].abs().sum() > 0


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_the_layer_mean_without_autograd_is_the_same_and_leaves_the_ego_alone(tiny_data: Dataset, layers: int) -> None:
    adjacency = to_torch_sparse(normalized_adjacency(tiny_data.train), torch.device("cpu"))
    ego = torch.randn(tiny_data.n_users + tiny_data.n_items, 8)
    kept = ego.clone()
    with_grad = layer_mean(ego, adjacency, layers)
    with torch.no_grad():
        without = layer_mean(ego, adjacency, layers)
    assert torch.equal(with_grad, without)  # the same additions in the same order
    assert torch.equal(ego, kept) and without.data_ptr() != ego.data_ptr()


@pytest.mark.parametrize("grad", [False, True])
def test_the_layer_mean_frees_a_decoded_input_after_the_first_layer(
    tiny_data: Dataset, monkeypatch: pytest.MonkeyPatch, grad: bool
) -> None:
    adjacency = to_torch_sparse(normalized_adjacency(tiny_data.train), torch.device("cpu"))
    weight = torch.randn(tiny_data.n_users + tiny_data.n_items, 8, requires_grad=grad)
    decoded: list[weakref.ref[torch.Tensor]] = []
    alive_at_each_layer: list[bool] = []

    def spy(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alive_at_each_layer.append(decoded[0]() is not None)
        return propagate(adjacency, x)

    def decode() -> torch.Tensor:
        ego = weight * 2  # not a leaf: autograd keeps nothing of it
        decoded.append(weakref.ref(ego))
        return ego

    monkeypatch.setattr("trainer.model.propagate", spy)
    with torch.set_grad_enabled(grad):
        layer_mean(decode(), adjacency, 3)
    assert alive_at_each_layer == [True, False, False]  # kept to the end, it was a fourth n × d buffer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("grad", [False, True])
def test_the_layer_mean_lets_its_input_go(grad: bool) -> None:
    device = torch.device("cuda")
    n = 200_000  # large against the adjacency and the allocator's rounding
    rows = np.arange(n)
    shifted = sp.csr_matrix((np.ones(n, dtype=np.float32), (rows, (rows + 1) % n)), shape=(n, n))
    adjacency = to_torch_sparse(shifted, device)
    matrix = n * 64 * 4
    weight = torch.randn(n, 64, device=device, requires_grad=grad)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.set_grad_enabled(grad):
        mean = layer_mean(weight * 2, adjacency, 3)  # a decoded input: held by no one but the call
    extra = torch.cuda.max_memory_allocated() - before
    assert mean.shape == (n, 64)
    # Layer, sum, and the product's output and its zero-filled scratch: five while E⁰ was kept to the end.
    assert extra < 4.5 * matrix, extra / matrix
