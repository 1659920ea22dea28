"""Resumable checkpoints: ``last.pt`` holds everything a run needs to continue where it stopped.

That is the model, quantizer and optimizer state, the last epoch trained, the early stopping's state (best
epoch, score, metrics and weights, the stale count, the learning-rate decays, the validation history) and the
sampler's generator state for the next epoch, so a resumed run draws the batches the uninterrupted one would have.
The config is kept as its flat JSON (``TrainConfig.to_json``).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from index.command_line import first_line
from trainer.config import TrainConfig
from trainer.model import LightGCN
from trainer.quantization import Quantizer
from trainer.step_graph import match_capturable
from trainer.stopping import Best, EarlyStopping

log = logging.getLogger(__name__)

INPUT_LAYER_FIELDS = ("input_layer", "hash_bits", "hash_groups", "hash_hops", "seed")  # what fixes the hash codes


@dataclass
class Progress:
    """Where a run's loop continues: a fresh run's start, or what a checkpoint kept."""

    stopping: EarlyStopping
    start_epoch: int = 0


def save_checkpoint(
    path: Path,
    *,
    config: TrainConfig,
    model: LightGCN,
    quantizer: Quantizer,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    stopping: EarlyStopping,
    generator: torch.Tensor,
) -> None:
    """Write ``path`` after ``epoch`` atomically: a run killed mid-write leaves the previous checkpoint."""
    state = {
        "config": config.to_json(),
        "model": model.state_dict(),
        "quantizer": quantizer.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best_epoch": stopping.best.epoch,
        "best_score": stopping.best.score,
        "stale": stopping.stale,
        "lr_milestones": stopping.milestones,
        "best_state": stopping.best.weights,
        "best_valid": stopping.best.valid,
        "history": stopping.history,
        "generator": generator,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


CHECKPOINT_KEYS = frozenset({"model", "quantizer", "optimizer", "epoch", "generator", "history"})


def load_checkpoint(
    path: Path,
    config: TrainConfig,
    model: LightGCN,
    quantizer: Quantizer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    capturable: bool,
) -> Progress:
    """Load the states saved at ``path`` into the run's modules, optimizer (made ``capturable`` or not, as this
    run steps) and batch generator; return where its loop continues."""
    try:  # tensors, numbers and containers only: a file that would run code when unpickled is refused
        checkpoint = torch.load(path, map_location=model.adjacency.device, weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"--resume: {path} is not a checkpoint this build can read ({first_line(error)})") from error
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
        missing = ", ".join(sorted(CHECKPOINT_KEYS))
        raise ValueError(f"--resume: {path} is not a checkpoint of recsys-train (it needs {missing})")
    refuse_other_input_layer(checkpoint.get("config", {}), config, path)
    try:
        model.load_state_dict(checkpoint["model"])
        quantizer.load_state_dict(checkpoint["quantizer"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(
            f"--resume: {path} was saved by another run (another --dim, --method or graph?): {first_line(error)}"
        ) from error
    match_capturable(optimizer, capturable)  # the checkpoint's run may have stepped with(out) graphs
    generator.set_state(checkpoint["generator"].to(generator.get_state().device))
    best = Best(checkpoint["best_epoch"], checkpoint["best_score"], checkpoint["best_valid"], checkpoint["best_state"])
    stopping = EarlyStopping(
        config.schedule,
        best,
        stale=checkpoint.get("stale", 0),
        milestones=list(checkpoint.get("lr_milestones", [])),
        history=checkpoint["history"],
    )
    progress = Progress(stopping, checkpoint["epoch"] + 1)
    log.info("resumed from %s at epoch %d", path, config.schedule.epochs if stopping.stopped else progress.start_epoch)
    return progress


def refuse_other_input_layer(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint's hash codes come back with it: resuming under other code settings would train and export a
    model whose codes are not the ones its settings say."""
    now_options = config.flat()
    if saved.get("input_layer", "table") != "hash" and now_options["input_layer"] != "hash":
        return
    old_defaults = {"input_layer": "table", "hash_hops": [0]}  # checkpoints from before those options

    def plain(value: object) -> object:  # the config's tuples come back from JSON as lists
        return list(value) if isinstance(value, tuple | list) else value

    for name in INPUT_LAYER_FIELDS:
        was, now = plain(saved.get(name, old_defaults.get(name))), plain(now_options[name])
        if was != now:
            raise ValueError(f"--resume: {path} was trained with {name} {was}, this run asks for {now}")
