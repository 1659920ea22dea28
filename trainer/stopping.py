"""When training stops and what it keeps: the best validation, a plateau's learning-rate decays, the time budget.

Validation selects the epoch: the best score's weights are kept and restored at the end. Each validation
without gain counts towards ``patience`` (stop) and ``lr_decay_patience`` (multiply the learning rate by
``lr_decay_factor``, at most ``lr_decays`` times; a decay restarts the count). A refit has no validation, so it
replays the decays at the epochs the selection run made them (``lr_milestones``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import ScheduleConfig
from trainer.distributed import World, any_rank

log = logging.getLogger(__name__)

Weights = dict[str, Any]  # {"model": state dict, "quantizer": state dict}


@dataclass
class Best:
    """The best validation so far: its epoch (-1: the warm start), score, metrics and a copy of the weights."""

    epoch: int = -1
    score: float = -math.inf
    valid: dict[str, float] = field(default_factory=dict)
    weights: Weights | None = None


@dataclass
class EarlyStopping:
    """Selects the epoch by validation, decays the learning rate on a plateau, and says when to stop."""

    schedule: ScheduleConfig
    best: Best = field(default_factory=Best)
    stale: int = 0  # validations without gain since the best or the last decay
    milestones: list[int] = field(default_factory=list)  # epochs after which the learning rate decayed
    history: list[dict[str, float]] = field(default_factory=list)  # the validation curve
    target_seconds: float | None = None  # when the score first reached ``stop_at_metric``

    @property
    def stopped(self) -> bool:
        return self.stale >= self.schedule.patience or self.diverged

    @property
    def diverged(self) -> bool:
        """A validated epoch's training loss was NaN or infinite: its weights are past saving, so it is never
        selected and the run stops, keeping the best epoch before it (read from the history, so a resumed run
        knows it too)."""
        return any(point["epoch"] >= 0 and not math.isfinite(point["loss"]) for point in self.history)

    def started(self, valid: dict[str, float], weights: Weights) -> None:
        """The starting point (a warm start) validated as epoch -1: the best until an epoch beats it."""
        self.history.append({"epoch": -1, "loss": math.nan, "seconds": 0.0, **valid})
        log.info(json.dumps({"event": "valid", "epoch": -1, **valid}))
        self.best = Best(-1, valid[self.schedule.select_metric], valid, weights)

    def validated(
        self,
        epoch: int,
        loss: float,
        seconds: float,
        valid: dict[str, float],
        weights: Callable[[], Weights],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Record the validation after ``epoch``; keep a copy of the ``weights`` when it is the best, otherwise
        count it and decay the learning rate on a plateau."""
        self.history.append({"epoch": epoch, "loss": loss, "seconds": seconds, **valid})
        log.info(json.dumps({"event": "valid", "epoch": epoch, "loss": round(loss, 5), **valid}))
        if not math.isfinite(loss):
            return
        schedule = self.schedule
        score = valid[schedule.select_metric]
        if schedule.stop_at_metric is not None and score >= schedule.stop_at_metric and self.target_seconds is None:
            self.target_seconds = seconds
        if score > self.best.score:
            self.best, self.stale = Best(epoch, score, valid, weights()), 0
            return
        self.stale += 1
        if schedule.lr_decay_patience and self.stale >= schedule.lr_decay_patience:
            if len(self.milestones) < schedule.lr_decays:
                self.decay(epoch, optimizer)
                self.stale = 0

    def stop_reason(self, epoch: int) -> str | None:
        """Why the run stops after this validation, if it does."""
        metric = self.schedule.select_metric
        if self.diverged:
            kept = f"keeping epoch {self.best.epoch}" if self.best.weights is not None else "no earlier epoch to keep"
            return f"stopping at epoch {epoch}: the training loss is not finite (diverged); {kept}"
        if self.stopped:
            return f"early stop at epoch {epoch}: no {metric} gain in {self.stale} evaluations"
        if self.target_seconds is not None:
            return f"stop at epoch {epoch}: {metric} reached {self.schedule.stop_at_metric:.4f}"
        return None

    def replay(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Decay where the selection run did (a refit's ``lr_milestones``)."""
        if epoch in self.schedule.lr_milestones:
            self.decay(epoch, optimizer)

    def decay(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= self.schedule.lr_decay_factor
        self.milestones.append(epoch)
        log.info(json.dumps({"event": "lr", "epoch": epoch, "lr": float(optimizer.param_groups[0]["lr"])}))


class TimeBudget:
    """``--max-minutes`` of training from now; every rank stops after the same epoch (the clocks may disagree)."""

    def __init__(self, minutes: float | None, world: World, device: torch.device) -> None:
        self.minutes = minutes
        self.deadline = time.perf_counter() + minutes * 60 if minutes else math.inf
        self.world, self.device = world, device

    def spent(self) -> bool:
        """Whether any rank is past the deadline: a collective, every rank calls it at the same points."""
        return any_rank(time.perf_counter() > self.deadline, self.world, self.device)
