"""The export: what it runs the trained model under."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from index.bundle import Bundle
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.export import export_bundle
from trainer.train import train


@pytest.mark.parametrize("input_layer", ["table", "hash"])
def test_the_export_runs_the_model_without_autograd(tiny_data: Dataset, tmp_path: Path, input_layer: str) -> None:
    """Nothing in the export is trained. With autograd on, the graph behind every node's representation (the
    decoder's and each layer's activations) stayed alive through the whole export: 2.8 GiB of a 3M × 3M hashed
    export's 15.7 GiB peak on the host."""
    config = TrainConfig.of(method="hq", bits=2, dim=16, epochs=1, eval_every=1, device="cpu", input_layer=input_layer)
    result = train(tiny_data, config)
    grad_enabled: list[bool] = []
    result.model.inputs.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    export_bundle(result, tiny_data, config, tmp_path)
    assert grad_enabled and not any(grad_enabled)
    assert torch.is_grad_enabled()  # the caller's mode is restored
    assert Bundle.load(tmp_path).manifest.method == "hq"
