"""Training learns, the served path reproduces the device path, checkpoints resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from index.bundle import Bundle
from index.item_index import ItemIndex
from tests.conftest import TrainedBundle
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.evaluate import served_path_metrics
from trainer.metrics import ranking_metrics
from trainer.train import refit, train


def popularity_recall(data: Dataset) -> float:
    seen = data.seen()
    counts = np.bincount(seen.indices, minlength=data.n_items)
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    topk = []
    for user in users:
        order = np.lexsort((np.arange(data.n_items), -counts))
        order = order[~np.isin(order, seen.indices[seen.indptr[user] : seen.indptr[user + 1]])]
        topk.append(order[:50])
    return ranking_metrics(np.array(topk), users, data.test)["recall@20"]


@pytest.mark.parametrize("bundle_name", ["fp_bundle", "ste_bundle"])
def test_trained_models_beat_popularity(bundle_name: str, request: pytest.FixtureRequest) -> None:
    trained: TrainedBundle = request.getfixturevalue(bundle_name)
    assert trained.report.test_served["recall@20"] > 1.2 * popularity_recall(trained.data)


@pytest.mark.parametrize("bundle_name", ["fp_bundle", "ste_bundle", "hq2_bundle"])
def test_exported_codes_rescored_give_the_same_metrics(bundle_name: str, request: pytest.FixtureRequest) -> None:
    trained: TrainedBundle = request.getfixturevalue(bundle_name)
    bundle = Bundle.load(trained.root)
    index = ItemIndex.build(bundle.item_codes, bundle.layout, bundle.dim, device="cpu")
    again = served_path_metrics(
        bundle.user_codes,
        bundle.item_codes,
        bundle.layout,
        bundle.dim,
        trained.data.test,
        trained.data.seen(),
        index=index,
    )
    assert again == bundle.manifest.metrics
    tolerance = 1e-12 if bundle.layout.is_binary else 1e-4  # binary: same rankings, mean in another order
    for name, value in trained.report.test_device.items():
        assert again[name] == pytest.approx(value, abs=tolerance)


def test_checkpoint_resume_continues_where_it_stopped(tmp_path: Path, tiny_data: Dataset) -> None:
    base = TrainConfig.of(method="ste", dim=16, batch_size=2048, eval_every=2, device="cpu", checkpoint_dir=tmp_path)
    first = train(tiny_data, base.with_options(epochs=4))
    assert (tmp_path / "last.pt").is_file()
    resumed = train(tiny_data, base.with_options(epochs=6, resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 3, 5]
    assert resumed.history[:2] == first.history
    assert resumed.epochs_trained == 6


class RunsCode:
    """Unpickled, it would run ``touch`` on the path it holds: what a crafted checkpoint does with a full unpickler."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.path}",)


def unreadable_checkpoints(tmp_path: Path) -> dict[str, bytes]:
    payload = tmp_path / "code-ran"
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "something": 1}, other)
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": RunsCode(payload)}, crafted)
    return {
        "random bytes": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "truncated": crafted.read_bytes()[:100],
        "code when unpickled": crafted.read_bytes(),
        "another kind of file": other.read_bytes(),
    }


def test_a_checkpoint_that_cannot_be_resumed_is_one_error_naming_it_and_runs_no_code(
    tmp_path: Path, tiny_data: Dataset
) -> None:
    base = TrainConfig.of(method="ste", dim=16, batch_size=2048, eval_every=2, device="cpu", epochs=2)
    for name, content in unreadable_checkpoints(tmp_path).items():
        directory = tmp_path / name.replace(" ", "_")
        directory.mkdir()
        (directory / "last.pt").write_bytes(content)
        with pytest.raises(ValueError, match=r"--resume: .*last\.pt") as refused:
            train(tiny_data, base.with_options(checkpoint_dir=directory, resume=True))
        assert "\n" not in str(refused.value), name
    assert not (tmp_path / "code-ran").exists()
    # A checkpoint of another width is a run's own file, but not this run's.
    wide = tmp_path / "wide"
    train(tiny_data, base.with_options(checkpoint_dir=wide, dim=32))
    with pytest.raises(ValueError, match="saved by another run"):
        train(tiny_data, base.with_options(checkpoint_dir=wide, resume=True))


def test_refit_trains_the_selected_number_of_epochs_on_all_training_data(tiny_data: Dataset) -> None:
    config = TrainConfig.of(method="fp", dim=16, epochs=4, eval_every=2, batch_size=2048, device="cpu")
    selected = train(tiny_data, config)
    final = refit(tiny_data, config, selected)
    assert final.best_epoch == selected.best_epoch
    assert final.epochs_trained == selected.epochs_trained + selected.best_epoch + 1


def test_gnaq_keeps_its_pretraining_checkpoints_apart(tmp_path: Path, tiny_data: Dataset) -> None:
    config = TrainConfig.of(
        method="gnaq", dim=16, epochs=2, pretrain_epochs=2, eval_every=1, batch_size=2048, device="cpu",
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    result = train(tiny_data, config)
    stage = torch.load(tmp_path / "pretrain" / "last.pt", weights_only=False)
    final = torch.load(tmp_path / "last.pt", weights_only=False)
    assert stage["config"]["method"] == "fp" and "inputs.weight" in stage["model"]
    assert final["config"]["method"] == "gnaq" and "inputs.codebook" in final["model"]
    assert result.epochs_trained == 2


def test_warm_start_runs_a_full_precision_stage_first(tmp_path: Path, tiny_data: Dataset) -> None:
    config = TrainConfig.of(
        method="hq", bits=2, dim=16, epochs=1, pretrain_epochs=3, eval_every=1, batch_size=2048, device="cpu",
        checkpoint_dir=tmp_path, warm_start=True,
    )  # fmt: skip
    result = train(tiny_data, config)
    stage = torch.load(tmp_path / "pretrain" / "last.pt", weights_only=False)
    assert stage["config"]["method"] == "fp" and stage["epoch"] == 2
    assert result.epochs_trained == 1
    cold = train(tiny_data, config.with_options(warm_start=False, checkpoint_dir=None))
    assert cold.best_valid != result.best_valid  # the pre-trained start changes where one epoch lands


def test_resume_remembers_that_the_run_had_stopped_early(tmp_path: Path, tiny_data: Dataset) -> None:
    config = TrainConfig.of(
        method="fp", dim=8, lr=0.0, epochs=30, eval_every=1, patience=2, device="cpu", checkpoint_dir=tmp_path
    )
    first = train(tiny_data, config)  # lr 0: nothing improves after the first validation
    assert first.epochs_trained == 3
    again = train(tiny_data, config.with_options(resume=True))
    assert again.epochs_trained == 3 and again.best_epoch == first.best_epoch


def test_device_metrics_work_on_catalogues_smaller_than_k() -> None:
    import scipy.sparse as sp

    from trainer.evaluate import device_metrics

    truth = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 5))
    mask = sp.csr_matrix((1, 5))
    users, items = torch.ones(1, 4), torch.eye(5, 4)
    metrics = device_metrics(users, items, truth, mask, integer_scores=True)
    assert metrics["recall@50"] == 1.0


def test_model_versions_are_plain_names_even_for_hidden_dataset_folders() -> None:
    from trainer.export import new_model_version

    version = new_model_version(".cache/my data", "hq", 2)
    assert version.startswith("cache_my_data-hq2b-") and "/" not in version


def test_refit_repeats_only_the_validated_pretraining_epochs(tiny_data: Dataset) -> None:
    config = TrainConfig.of(
        method="ste", dim=8, lr=0.0, epochs=3, eval_every=1, patience=1, device="cpu", warm_start=True,
        pretrain_epochs=30,
    )  # fmt: skip
    selected = train(tiny_data, config)
    assert selected.pretrain_epochs_selected == 1  # lr 0: the stage's first validation stays the best
    assert refit(tiny_data, config, selected).pretrain_epochs_selected == 1  # not all 30 again


def test_learning_rate_decays_on_plateau_then_stops(tiny_data: Dataset) -> None:
    config = TrainConfig.of(
        method="fp", dim=8, lr=0.0, epochs=30, eval_every=1, patience=2, lr_decay_patience=1, lr_decays=2,
        device="cpu",
    )  # fmt: skip
    result = train(tiny_data, config)  # lr 0: no validation ever gains after the first
    assert result.lr_milestones == [1, 2]  # a decay after each stale validation, at most two
    assert result.epochs_trained == 5  # then two more stale validations stop it


def test_refit_replays_the_decays_that_selection_made(tiny_data: Dataset) -> None:
    config = TrainConfig.of(method="fp", dim=8, epochs=2, eval_every=1, batch_size=2048, device="cpu")
    selected = dataclasses.replace(train(tiny_data, config), best_epoch=3, lr_milestones=[0, 2, 7])
    final = refit(tiny_data, config, selected)
    assert final.epochs_trained - selected.epochs_trained == 4
    assert final.lr_milestones == [0, 2]  # 7 came after the selected epoch
