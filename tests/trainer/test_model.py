"""LightGCN's memory-lean layer mean gives the stacked mean's values and gradients."""

from __future__ import annotations

import torch

from trainer.data import Dataset
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.model import LightGCN


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
