"""The export's cold-start section codes a trained user as the torch model does: the numpy encoder that serves new
users gives the trained users' own representations (from their training items) and codes (from those). The section
holds the sum of the items' layers 0..K−1 that ``model()`` stacks, and the bundle says format version 3."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from index.bundle import FORMAT_VERSION, MANIFEST, Bundle
from index.codes import CodeLayout
from tests.conftest import TrainedBundle
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.export import cold_start_section
from trainer.train import train


@pytest.mark.parametrize(
    ("method", "bits", "user_bits", "layout"),
    [("hq", 1, 2, CodeLayout.PLANES2), ("hq", 1, None, CodeLayout.SIGN1), ("ste", None, None, CodeLayout.SIGN1)],
)
def test_the_numpy_encoder_codes_trained_users_as_the_torch_model(
    tiny_data: Dataset, method: str, bits: int | None, user_bits: int | None, layout: CodeLayout
) -> None:
    config = TrainConfig.of(method=method, bits=bits, user_bits=user_bits, dim=16, epochs=3, batch_size=1024,
                         eval_every=3, device="cpu", input_layer="hash", hash_bits=32, hash_groups=4)  # fmt: skip
    result = train(tiny_data, config)
    model, quantizer = result.model, result.quantizer
    # The section's item degrees are the served ones (train + validation); the model propagated train's alone.
    train_only = dataclasses.replace(tiny_data, valid=sp.csr_matrix(tiny_data.valid.shape, dtype=np.float32))
    section = cold_start_section(model, quantizer, train_only)
    assert section is not None and section.hashed is not None and section.user_layout is layout
    with torch.no_grad():
        user_rep, _ = quantizer.node_representations(model)
    exported = quantizer.export(user_rep, "user").codes
    # The encoder is exact: every trained user's representation gets its exported code.
    np.testing.assert_array_equal(section.encoder.encode(user_rep.numpy()), exported)
    # The representation from the user's training items, its ego decoded from the hash code they give.
    rows = tiny_data.train
    for user in range(0, tiny_data.n_users, 7):
        items = rows.indices[rows.indptr[user] : rows.indptr[user + 1]].astype(np.int64)
        got = section.representation(items, hashed_ego=True)
        np.testing.assert_allclose(got, user_rep[user].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"user {user}")


@pytest.mark.parametrize(("input_layer", "layers"), [("table", 3), ("table", 1), ("hash", 2)])
def test_the_section_holds_the_sum_of_the_items_layers(tiny_data: Dataset, input_layer: str, layers: int) -> None:
    config = TrainConfig.of(method="ste", dim=16, layers=layers, epochs=1, batch_size=1024, eval_every=1,
                         device="cpu", input_layer=input_layer, hash_bits=32, hash_groups=4)  # fmt: skip
    result = train(tiny_data, config)
    model = result.model
    section = cold_start_section(model, result.quantizer, tiny_data)
    assert section is not None and section.layers == layers
    with torch.no_grad():
        want = model()[:layers, model.n_users :].sum(dim=0).numpy()
    assert section.item_layer_sum.dtype == np.float32 and section.item_layer_sum.shape == want.shape
    np.testing.assert_allclose(section.item_layer_sum, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the section holds a copy: the model's weights changing later leave it as exported
        for parameter in model.parameters():
            parameter.add_(1.0)
    np.testing.assert_allclose(section.item_layer_sum, want, rtol=1e-5, atol=1e-5)


def test_a_published_bundle_says_format_version_3(ste_bundle: TrainedBundle) -> None:
    bundle = Bundle.load(ste_bundle.root)
    assert FORMAT_VERSION == 3
    assert json.loads((bundle.path / MANIFEST).read_text())["format_version"] == 3
    assert bundle.cold_start is not None and bundle.cold_start.layers == 3  # the fixtures' K
