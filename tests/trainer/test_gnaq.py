"""GNAQ (trainer.quantization.gnaq): quartile bins, per-node codebooks, re-binning from propagation.

GNAQ's served codes are quartile bins with per-node level tables; its training input is tanh of a
per-node codebook indexed by codes that are re-binned from the *propagated* output after every step.
These tests pin each of those by hand, and check that the bundle's codes + level tables dequantize to
exactly the values the model was selected with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.codes import CodeLayout, ScaleMode, dequantize
from trainer.data import Dataset
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.model import LightGCN
from trainer.quantization.gnaq import NodeAwareQuantizer, NodeCodebookInput, bin_means, quartile_bins


def test_quartile_bins_by_hand() -> None:
    x = torch.tensor([[0.5, -1.0, 3.0, 2.0, 0.0, 0.1, -2.0, 1.0]])
    # ranks [4, 1, 7, 6, 2, 3, 0, 5] → rank // 2
    assert quartile_bins(x).tolist() == [[2, 0, 3, 3, 1, 1, 0, 2]]


@pytest.mark.parametrize("dim", [8, 16, 64])
def test_quartile_bins_are_equal_sized_and_monotone(dim: int) -> None:
    x = torch.randn(20, dim, generator=torch.Generator().manual_seed(dim))
    codes = quartile_bins(x)
    for row in range(20):
        assert torch.bincount(codes[row], minlength=4).tolist() == [dim // 4] * 4
        by_value = codes[row][torch.argsort(x[row])]
        assert bool((by_value[1:] >= by_value[:-1]).all())


def test_quartile_bins_break_ties_by_position() -> None:
    codes = quartile_bins(torch.zeros(2, 64))
    expected = (torch.arange(64) * 4) // 64
    assert torch.equal(codes, expected.expand(2, 64))


def test_bin_means_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [4.0, -1.0, 2.0, 0.0, 6.0, 1.0, -3.0, 8.0]])
    codes = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3], [3, 0, 3, 0, 3, 0, 0, 3]])
    means = bin_means(x, codes)
    # row 1: bin 0 = mean(-1, 0, 1, -3) = -0.75, bin 3 = mean(4, 2, 6, 8) = 5; bins 1 and 2 empty → 0
    assert means.tolist() == [[1.5, 3.5, 5.5, 7.5], [-0.75, 0.0, 0.0, 5.0]]


def pretrained_matrix(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_codebook_input_from_pretrained_reproduces_bin_means() -> None:
    pretrained = pretrained_matrix(6, 16)
    pretrained[5] = torch.linspace(1.5, 3.0, 16)  # beyond tanh's range: levels saturate at 0.999
    layer = NodeCodebookInput(6, 16, pretrained)
    codes = quartile_bins(pretrained)
    assert torch.equal(layer.codes, codes)
    means = bin_means(pretrained, codes)
    expected = means.gather(1, codes)
    expected[5] = 0.999
    torch.testing.assert_close(layer(), expected, atol=2e-6, rtol=1e-5)
    nodes = torch.tensor([4, 1, 1])
    torch.testing.assert_close(layer.ego(nodes), layer()[nodes])
    # four distinct, increasing levels per node (bin means of quartiles)
    assert bool((layer.codebook[:5, 1:] > layer.codebook[:5, :-1]).all())


def test_codebook_input_refuses_fewer_dims_than_levels() -> None:
    with pytest.raises(ValueError, match="dim >= 4"):
        NodeCodebookInput(3, 2)


def test_rebin_takes_the_quartile_bins_of_the_given_matrix() -> None:
    pretrained = pretrained_matrix(5, 8)
    layer = NodeCodebookInput(5, 8, pretrained)
    before = layer.codes.clone()
    codebook = layer.codebook.detach().clone()
    layer.rebin(-pretrained)  # reversed order: rank r → 7 − r, code q → 3 − q
    assert torch.equal(layer.codes, 3 - before)
    assert torch.equal(layer.codebook, codebook)  # levels untouched, only the codes move
    torch.testing.assert_close(layer(), torch.tanh(codebook.gather(1, 3 - before)))


def small_gnaq_model(data: Dataset, dim: int = 8) -> LightGCN:
    adjacency = to_torch_sparse(normalized_adjacency(data.train), torch.device("cpu"))
    model = LightGCN(data.n_users, data.n_items, dim, 3, adjacency)
    model.inputs = NodeCodebookInput(
        data.n_users + data.n_items, dim, pretrained_matrix(data.n_users + data.n_items, dim)
    )
    return model


def test_after_step_rebins_from_the_propagated_output(tiny_data: Dataset) -> None:
    model = small_gnaq_model(tiny_data)
    quantizer = NodeAwareQuantizer(8, 3)
    inputs = model.inputs
    assert isinstance(inputs, NodeCodebookInput)
    before = inputs.codes.clone()
    with torch.no_grad():
        propagated = model().mean(dim=0)  # LightGCN's final embedding, with the codes before the step
    quantizer.after_step(model)
    assert torch.equal(inputs.codes, quartile_bins(propagated))
    # message passing moves a large share of the codes (a re-bin of the ego embedding would move none)
    assert (inputs.codes != before).float().mean() > 0.1


def test_codebooks_learn_through_propagation(tiny_data: Dataset) -> None:
    """A loss on one item's final embedding reaches the codebooks of the users who rated it."""
    model = small_gnaq_model(tiny_data)
    item = 0
    raters = tiny_data.train[:, item].nonzero()[0]
    assert raters.size > 0
    model()[:, tiny_data.n_users + item].mean(dim=0).sum().backward()
    inputs = model.inputs
    assert isinstance(inputs, NodeCodebookInput) and inputs.codebook.grad is not None
    grad_norm = inputs.codebook.grad.abs().sum(dim=1)
    assert bool((grad_norm[torch.from_numpy(raters)] > 0).all())


def test_served_values_equal_dequantized_export() -> None:
    quantizer = NodeAwareQuantizer(16, 3)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(3))
    exported = quantizer.export(x, "item")
    assert exported.scales is not None and exported.scales.shape == (7, 4)
    assert exported.codes.shape == (7, 2 * 16 // 8)
    served = quantizer.served(x, "item").numpy()
    np.testing.assert_array_equal(
        dequantize(exported.codes, CodeLayout.PLANES2, 16, exported.scales, ScaleMode.LEVELS), served
    )
    # served values are each node's bin means: 4 distinct values per row, one per quartile
    for row in range(7):
        assert np.unique(served[row]).size == 4
    assert quantizer.forward(x, "item") is x  # the loss sees the propagated output itself


def test_codes_can_start_from_the_propagated_output_while_levels_fit_the_ego() -> None:
    ego = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    propagated = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    layer = NodeCodebookInput(5, 8, ego, bins_from=propagated)
    codes = quartile_bins(propagated)
    assert torch.equal(layer.codes, codes)
    expected = torch.tanh(torch.atanh(bin_means(ego, codes).clamp(-0.999, 0.999)))
    torch.testing.assert_close(layer.codebook.tanh(), expected)
