"""A saved full-precision stage starts quantized runs: same embeddings, time accounted, wrong files refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.train import train
from trainer.warm_start import (
    SavedStage,
    WarmStartError,
    load_stage,
    logit_temperature,
    save_stages,
    saved_temperature,
)


def fp_stage(data: Dataset) -> SavedStage:
    result = train(data, TrainConfig.of(method="fp", dim=16, epochs=4, eval_every=2, batch_size=2048, device="cpu"))
    return SavedStage(ego=result.model.inputs().detach(), seconds=result.train_seconds, epochs=result.best_epoch + 1)


def test_round_trip_and_refusals(tmp_path: Path, tiny_data: Dataset) -> None:
    path = tmp_path / "fp.pt"
    stage = fp_stage(tiny_data)
    save_stages(path, tiny_data.name, {"select": stage})
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    n_nodes = tiny_data.n_users + tiny_data.n_items
    loaded = load_stage(path, "select", dataset=tiny_data.name, n_nodes=n_nodes, dim=16)
    assert torch.equal(loaded.ego, stage.ego) and loaded.epochs == stage.epochs
    with pytest.raises(WarmStartError, match="saved for dataset"):
        load_stage(path, "select", dataset="gowalla", n_nodes=n_nodes, dim=16)
    with pytest.raises(WarmStartError, match="shape"):
        load_stage(path, "select", dataset=tiny_data.name, n_nodes=n_nodes, dim=32)
    with pytest.raises(WarmStartError, match="no 'refit' stage"):
        load_stage(path, "refit", dataset=tiny_data.name, n_nodes=n_nodes, dim=16)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WarmStartError, match="not a warm-start file") as junk:
        load_stage(tmp_path / "junk.pt", "select", dataset=tiny_data.name, n_nodes=n_nodes, dim=16)
    assert "\n" not in str(junk.value)  # torch's paragraph, cut to its first line


def test_quantized_run_starts_from_the_saved_stage_and_counts_its_time(tmp_path: Path, tiny_data: Dataset) -> None:
    path = tmp_path / "fp.pt"
    stage = dataclasses.replace(fp_stage(tiny_data), seconds=1000.0)
    save_stages(path, tiny_data.name, {"select": stage})
    config = TrainConfig.of(
        method="hq", bits=2, dim=16, epochs=2, eval_every=1, batch_size=2048, device="cpu", warm_start_from=path
    )
    result = train(tiny_data, config)
    assert result.train_seconds > 1000.0
    assert result.pretrain_epochs_selected == stage.epochs
    assert result.history[0]["epoch"] == -1  # the warm start itself was validated as a candidate
    lr_zero = train(tiny_data, config.with_options(lr=0.0))
    assert lr_zero.best_epoch == -1  # nothing beat the starting point, so the starting point is kept
    assert torch.equal(lr_zero.model.inputs.weight, stage.ego)  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_stage_is_neither_saved_nor_loaded(tmp_path: Path, tiny_data: Dataset, bad: float) -> None:
    path, stage = tmp_path / "fp.pt", fp_stage(tiny_data)
    diverged = dataclasses.replace(stage, ego=stage.ego.clone().index_fill_(0, torch.tensor([3]), bad))
    with pytest.raises(WarmStartError, match="'refit' stage holds NaN or infinite embeddings"):
        save_stages(path, tiny_data.name, {"select": stage, "refit": diverged})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
    # a file written by a writer that did not check (an older version, another tool) is refused as it is read
    torch.save({"dataset": tiny_data.name, "stages": {"select": {"ego": diverged.ego, "seconds": 1.0, "epochs": 2}}},
               path)  # fmt: skip
    n_nodes = tiny_data.n_users + tiny_data.n_items
    with pytest.raises(WarmStartError, match="'select' stage holds NaN or infinite embeddings"):
        load_stage(path, "select", dataset=tiny_data.name, n_nodes=n_nodes, dim=16)


def test_a_file_keeps_the_temperature_its_logits_were_trained_under(tmp_path: Path) -> None:
    """A teacher's logits are its inner products over that temperature: a softmax model saved at T = 0.2 and read
    at 1 gives a near-uniform ranking to distil, which flattened the students it taught."""
    stage = SavedStage(ego=torch.ones(4, 2), seconds=1.0, epochs=1)
    assert logit_temperature("softmax", 0.2) == 0.2 and logit_temperature("bpr", 0.2) == 1.0
    save_stages(tmp_path / "softmax.pt", "ml-100k", {"select": stage}, temperature=logit_temperature("softmax", 0.2))
    save_stages(tmp_path / "older.pt", "ml-100k", {"select": stage})  # a file from before it was recorded
    assert saved_temperature(tmp_path / "softmax.pt") == 0.2
    assert saved_temperature(tmp_path / "older.pt") == 1.0
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WarmStartError, match="not a warm-start file"):
        saved_temperature(tmp_path / "junk.pt")
