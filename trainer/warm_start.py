"""A full-precision stage saved once and shared by every quantized run that warm-starts from it.

Quantization-aware training starts from a trained fp model (as GNAQ prescribes and as production QAT
does). Training that model once per quantized method repeats the same work; instead an `fp` run saves
its ego embeddings — the validation-selected model and, with ``--refit``, the model refit on train +
validation — and quantized runs load the one matching their own stage. The file also carries the
seconds and epochs that stage took, so a quantized run's reported training time still includes them, and the
selected model's validation score, by which ``--teacher auto`` picks one of several teachers.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from index.command_line import first_line

Stage = Literal["select", "refit"]


class WarmStartError(ValueError):
    """A warm-start file that is missing, unreadable or made for another dataset or model shape."""


@dataclass(frozen=True)
class SavedStage:
    ego: torch.Tensor
    seconds: float
    epochs: int
    valid: float | None = None  # the selection metric on validation (a refit stage has none of its own)


def logit_temperature(loss: str, temperature: float) -> float:
    """What a model's inner products were divided by in its loss: its ``--temperature`` with the softmax loss, 1
    with BPR (whose logits are the inner products)."""
    return temperature if loss == "softmax" else 1.0


def save_stages(
    path: Path, dataset: str, stages: dict[Stage, SavedStage], *, layers: int | None = None,
    temperature: float | None = None,
) -> None:  # fmt: skip
    """Write atomically: a half-written file must never be picked up by a concurrent run. A stage whose training
    diverged is refused, not saved: every run that warm-starts from the file would start from NaN. ``layers``, the
    propagation the embeddings were trained under, is kept for a teacher's check (``load_stage``); ``temperature``
    (``logit_temperature``) for a teacher's logits (``saved_temperature``)."""
    for name, stage in stages.items():
        if not torch.isfinite(stage.ego).all():
            raise WarmStartError(f"{path}: the {name!r} stage holds NaN or infinite embeddings (diverged): not saved")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": dataset,
        **({"layers": layers} if layers is not None else {}),
        **({"temperature": temperature} if temperature is not None else {}),
        "stages": {
            name: {"ego": s.ego.detach().cpu(), "seconds": s.seconds, "epochs": s.epochs}
            | ({"valid": s.valid} if s.valid is not None else {})
            for name, s in stages.items()
        },
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_stage(
    path: Path, stage: Stage, *, dataset: str, n_nodes: int, dim: int | None, layers: int | None = None
) -> SavedStage:
    """The saved ``stage``; ``dim`` None accepts any width (a distillation teacher need not match its student).
    With ``layers``, a file that says it was trained under other layers is refused (older files say nothing)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved = payload["stages"]
        found = payload["dataset"]
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as error:
        raise WarmStartError(f"{path}: not a warm-start file ({first_line(error)})") from error
    if found != dataset:
        raise WarmStartError(f"{path}: saved for dataset {found!r}, this run trains {dataset!r}")
    if stage not in saved:
        raise WarmStartError(f"{path}: has no {stage!r} stage (save it from an fp run with --refit)")
    if layers is not None and payload.get("layers", layers) != layers:
        raise WarmStartError(
            f"{path}: trained with --layers {payload['layers']}, this run propagates {layers}: its ranking, "
            "propagated here, would not be the one it learned"
        )
    entry = saved[stage]
    ego = entry["ego"]
    if ego.ndim != 2 or ego.shape[0] != n_nodes or (dim is not None and ego.shape[1] != dim):
        wanted = (n_nodes, dim if dim is not None else "any")
        raise WarmStartError(f"{path}: embeddings of shape {tuple(ego.shape)}, this model needs {wanted}")
    if not torch.isfinite(ego).all():
        raise WarmStartError(f"{path}: the {stage!r} stage holds NaN or infinite embeddings")
    valid = entry.get("valid")
    return SavedStage(
        ego=ego.float(), seconds=float(entry["seconds"]), epochs=int(entry["epochs"]),
        valid=float(valid) if valid is not None else None,
    )  # fmt: skip


def saved_temperature(path: Path) -> float:
    """The temperature the file's model was trained under (``save_stages``), 1 where the file does not say: a
    teacher's logits are its inner products divided by it. A softmax model read at 1 instead of its 0.2 gives a
    near-uniform ranking to distil, which flattens the student."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no tensor is read
        return float(payload.get("temperature", 1.0))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError, EOFError,
            pickle.UnpicklingError) as error:  # fmt: skip
        raise WarmStartError(f"{path}: not a warm-start file ({first_line(error)})") from error
