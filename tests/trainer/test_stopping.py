"""Stopping rules and meters on their own: selection, plateau decays, stop-at-metric, the time budget, throughput."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ScheduleConfig
from trainer.distributed import World
from trainer.metering import Throughput
from trainer.stopping import EarlyStopping, TimeBudget


def sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_validation_keeps_the_best_decays_on_a_plateau_then_stops() -> None:
    stopping = EarlyStopping(ScheduleConfig(patience=2, lr_decay_patience=1, lr_decays=1, lr_decay_factor=0.5))
    optimizer = sgd()
    copies = 0

    def weights() -> dict[str, object]:
        nonlocal copies
        copies += 1
        return {"model": {}, "quantizer": {}}

    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.2, 0.2]):
        assert stopping.stop_reason(epoch - 1) is None
        stopping.validated(epoch, 0.5, float(epoch), {"recall@20": score}, weights, optimizer)
    assert stopping.best.epoch == 1 and stopping.best.score == 0.3 and copies == 2  # weights copied on gains only
    assert stopping.milestones == [2] and optimizer.param_groups[0]["lr"] == 0.5  # one decay, at the first stale
    assert stopping.stop_reason(4) == "early stop at epoch 4: no recall@20 gain in 2 evaluations"
    assert [h["epoch"] for h in stopping.history] == [0, 1, 2, 3, 4] and stopping.target_seconds is None


def test_reaching_the_target_metric_records_when_and_stops() -> None:
    stopping = EarlyStopping(ScheduleConfig(stop_at_metric=0.25))
    for epoch, score in enumerate([0.1, 0.3, 0.4]):
        stopping.validated(epoch, 0.5, 10.0 * epoch, {"recall@20": score}, dict, sgd())
    assert stopping.target_seconds == 10.0  # the first time it got there
    assert stopping.stop_reason(2) == "stop at epoch 2: recall@20 reached 0.2500"


def test_replayed_decays_happen_after_the_given_epochs() -> None:
    stopping, optimizer = EarlyStopping(ScheduleConfig(lr_milestones=(0, 2), lr_decay_factor=0.1)), sgd()
    for epoch in range(4):
        stopping.replay(epoch, optimizer)
    assert stopping.milestones == [0, 2] and optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_time_budget_is_spent_only_when_given_and_past() -> None:
    assert not TimeBudget(None, World(), torch.device("cpu")).spent()
    assert TimeBudget(1e-9, World(), torch.device("cpu")).spent()
    assert TimeBudget(None, World(), torch.device("cpu")).deadline == math.inf


def test_throughput_leaves_the_first_epoch_out_unless_it_is_the_only_one() -> None:
    meter = Throughput()
    meter.add(2.0, 100)  # start-up included
    assert meter.samples_per_second == 50.0
    meter.add(1.0, 100)
    meter.add(1.0, 300)
    assert meter.samples_per_second == 200.0 and meter.first_epoch_seconds == 2.0


def test_a_diverged_epoch_is_never_selected_and_stops_the_run_keeping_the_best_before_it() -> None:
    stopping = EarlyStopping(ScheduleConfig(patience=5))
    for epoch, (loss, score) in enumerate([(0.5, 0.1), (0.4, 0.2), (math.nan, 0.9)]):
        assert stopping.stop_reason(epoch - 1) is None
        stopping.validated(epoch, loss, float(epoch), {"recall@20": score}, dict, sgd())
    assert stopping.best.epoch == 1 and stopping.best.score == 0.2  # NaN weights that rank 0.9 by chance: not kept
    assert stopping.diverged and stopping.stopped
    assert stopping.stop_reason(2) == "stopping at epoch 2: the training loss is not finite (diverged); keeping epoch 1"
    resumed = EarlyStopping(ScheduleConfig(patience=5), history=list(stopping.history))  # as a checkpoint restores it
    assert resumed.stopped


def test_a_warm_start_without_a_loss_is_not_a_divergence() -> None:
    stopping = EarlyStopping(ScheduleConfig())
    stopping.started({"recall@20": 0.1}, {"model": {}, "quantizer": {}})  # epoch -1's loss is NaN: nothing trained
    stopping.validated(0, math.inf, 1.0, {"recall@20": 0.5}, dict, sgd())
    assert stopping.best.epoch == -1 and stopping.diverged
    assert stopping.stop_reason(0).endswith("the training loss is not finite (diverged); keeping epoch -1")  # type: ignore[union-attr]
    assert not EarlyStopping(ScheduleConfig(), history=stopping.history[:1]).diverged
