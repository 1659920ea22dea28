"""`--teacher auto`: the best measured code for a width in one command, its fp stages trained once and cached.

The best codes start from the `fp` model of their own width (the warm start) and are distilled by an `fp` model
twice as wide (the teacher; docs/training.md). With ``--teacher auto`` one run trains the three in turn:

1. ``fp`` at the student's ``--dim``, saved as the warm start;
2. ``fp`` at 2 × ``--dim``, saved as the teacher: one per ``--teacher-options`` candidate (by default the sampled
   softmax at two L2 weights and BPR), the one with the best validation score kept. Which teacher is best differs
   between datasets and budgets (docs/experiments/fp_quality.md: each dataset has its own weight; a softmax model cut
   short on a CPU ranks below BPR), and validation is what a run may select on;
3. the student, with ``--warm-start-from`` (1), ``--teacher`` (2) and the distillation settings of the best
   measured recipe where the command line did not set them.

The fp stages take the run's own options (data, schedule, optimiser, device, seed, ``--refit``), with the method
and width replaced and ``--stage-options`` applied. Each is saved under ``--stage-cache`` by a hash of the dataset
(its options and a fingerprint of its interactions) and the stage's training configuration, so the next student on
the same data reuses them; only the student publishes a bundle.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from math import inf, isfinite
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from trainer.config import OptimConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from trainer.data import Dataset
from trainer.options import option, options_of
from trainer.train import TrainResult, refit, train
from trainer.warm_start import SavedStage, Stage, load_stage, logit_temperature, save_stages

log = logging.getLogger(__name__)
# In every cache file's key: files of an older format are not reused. 2: the file records its logits' temperature
# (a teacher is read at it; an older softmax teacher would be read at 1). 3: and its validation score (which
# teacher distils).
STAGE_FORMAT = 3

AUTO = Path("auto")  # --teacher auto

# The best measured distillation of 2-bit codes (docs/training.md); 1-bit codes were best at the defaults.
TWO_BIT_DEFAULTS: dict[str, object] = {"distill_weight": 3.0, "softmax_negatives": 1024}
# The teachers tried by default: the #32 full-precision recipe (a sampled softmax over in-batch items with a strong
# L2 weight), which taught the best measured codes (docs/benchmarks/quality.md), at the weights that were best on
# validation for Yelp2018 (5e-2) and Gowalla (2e-1); and BPR, the better teacher where the softmax cannot converge
# in the time given (ml-100k on a CPU).
SOFTMAX_TEACHER = "--loss softmax --softmax-negatives 0 --temperature 0.2 --lr 1e-3"
TEACHER_CANDIDATES = (f"{SOFTMAX_TEACHER} --reg 5e-2", f"{SOFTMAX_TEACHER} --reg 2e-1", "--loss bpr")


@dataclass(frozen=True)
class RecipeOptions:
    """Where ``--teacher auto`` keeps the fp stages it trains."""

    stage_cache: Path = option(
        Path("var/stages"),
        "--teacher auto: the fp warm start and teacher are saved here, keyed by dataset and configuration, and "
        "reused by the next run that needs them",
    )
    stage_options: str = option(
        "",
        "--teacher auto: optimisation, schedule and device options the fp stages take over this run's own, as on "
        'the command line (e.g. "--loss softmax --temperature 0.2 --lr 1e-3 --reg 0.2")',
    )
    teacher_options: tuple[str, ...] = option(
        TEACHER_CANDIDATES,
        "--teacher auto: the fp teachers (stage 2) to try, one quoted string of options each, over --stage-options "
        "and of the same kinds; all are trained (side by side on a GPU) and the one with the best validation score "
        "distils (one string: that teacher alone). Default: the sampled softmax at --reg 5e-2 and 2e-1, and BPR",
    )
    stages_side_by_side: bool = option(
        True,
        "--teacher auto on a GPU: train the fp warm start and teachers one after the other, not side by side in "
        "processes of their own (on a CPU they always take turns)",
        flag="--stages-in-turn",
    )


# What --stage-options may change: how the fp stages are optimised, how long and where they run.
STAGE_OPTIONS = frozenset(
    f.name for section in (OptimConfig, ScheduleConfig, RuntimeConfig) for f in options_of(section)
)


@dataclass(frozen=True)
class FittedStage:
    """One fp stage of the recipe: its saved file and what it cost (when it was trained, not when reused)."""

    name: str  # "warm_start" | "teacher"
    config: TrainConfig
    path: Path
    cached: bool
    seconds: float
    epochs: int
    valid: float | None  # the selection metric on validation of the selected (not the refit) model

    def record(self, dataset: str) -> dict[str, object]:
        """The stage's line in --results-json."""
        return {
            "stage": self.name,
            "dataset": dataset,
            "method": "fp",
            "dim": self.config.model.dim,
            **{name: getattr(self.config.optim, name) for name in ("loss", "temperature", "lr", "reg")},
            "cached": self.cached,
            "stage_file": str(self.path),
            "train_seconds": round(self.seconds, 1),
            "epochs": self.epochs,
            f"valid_{self.config.schedule.select_metric}": self.valid,
        }


def best_teacher(teachers: Sequence[FittedStage]) -> FittedStage:
    """The teacher with the best validation score (the first of equals; one that has none only when none has)."""
    best = max(teachers, key=lambda stage: stage.valid if stage.valid is not None and isfinite(stage.valid) else -inf)
    if len(teachers) > 1:
        scores = "; ".join(f"{describe(t.config)}: {_score(t)}" for t in teachers)
        log.info("stage 2/3: the teacher (%s) distils (validation %s: %s)", describe(best.config),
                 best.config.schedule.select_metric, scores)  # fmt: skip
    return best


def _score(stage: FittedStage) -> str:
    return "none" if stage.valid is None else f"{stage.valid:.4f}"


def describe(config: TrainConfig) -> str:
    """What tells the teachers apart in the log: the options a candidate's string sets (the loss, its L2 weight and
    learning rate, a softmax's temperature), so that candidates that differ in any of them read apart."""
    optim = config.optim
    temperature = f" --temperature {optim.temperature:g}" if optim.loss == "softmax" else ""
    return f"{optim.loss}, --reg {optim.reg:g} --lr {optim.lr:g}{temperature}"


def check_recipe(
    config: TrainConfig, *, distributed: bool, stage_options: frozenset[str], teacher_options: frozenset[str]
) -> None:
    """Refuse what ``--teacher auto`` cannot combine with, before any data is loaded; ``stage_options`` and
    ``teacher_options``: the names --stage-options and --teacher-options set."""
    if config.model.method == "fp":
        raise ValueError("--teacher auto distils a quantized code: use it with a --method other than fp")
    if config.pretraining.warm_start_from is not None:
        raise ValueError("--teacher auto trains its own warm start: drop --warm-start-from (or name a --teacher FILE)")
    if config.input.input_layer != "table":
        raise ValueError("--teacher auto warm-starts from an embedding table: use it with --input-layer table")
    if distributed:
        raise ValueError("--teacher auto runs in one process: train its stages without torchrun")
    for flag, names in (("--stage-options", stage_options), ("--teacher-options", teacher_options)):
        if names - STAGE_OPTIONS:
            named = ", ".join("--" + name.replace("_", "-") for name in sorted(names - STAGE_OPTIONS))
            raise ValueError(f"{flag} sets {named}: only optimisation, schedule and device options")


def fingerprint(data: Dataset) -> str:
    """A hash of the loaded interactions and ids: a changed file gives another key (cheap next to training)."""
    digest = hashlib.sha256()
    for matrix in (data.train, data.valid, data.test):
        digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(matrix.indptr, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(matrix.indices, dtype=np.int64).tobytes())
    digest.update("\n".join(data.user_ids).encode())
    digest.update("\n".join(data.item_ids).encode())
    return digest.hexdigest()


def stage_config(config: TrainConfig, dim: int) -> TrainConfig:
    """The run's own schedule and data options, training ``fp`` at ``dim`` with nothing to start from or distil."""
    return config.with_options(
        method="fp",
        bits=None,
        user_bits=None,
        item_scales=False,
        dim=dim,
        warm_start=False,
        warm_start_from=None,
        distillation=None,
        checkpoint_dir=None,
        resume=False,
    )


def fit(data: Dataset, config: TrainConfig, *, with_refit: bool) -> tuple[TrainResult, dict[Stage, SavedStage]]:
    """Train (and refit) one model; also its ego embeddings per stage, for a warm-start file."""
    result = train(data, config)
    valid = result.best_valid.get(config.schedule.select_metric)
    stages: dict[Stage, SavedStage] = {"select": _saved(result, result.train_seconds, valid)}
    if with_refit:
        selected_seconds = result.train_seconds
        result = refit(data, config, result)
        stages["refit"] = _saved(result, result.train_seconds - selected_seconds)  # the refit's own time
    return result, stages


def _saved(result: TrainResult, seconds: float, valid: float | None = None) -> SavedStage:
    with torch.no_grad():
        ego = result.model.inputs().detach()
    return SavedStage(ego=ego, seconds=seconds, epochs=result.best_epoch + 1, valid=valid)


def fp_stages(
    data: Dataset,
    config: TrainConfig,
    *,
    dim: int,
    with_refit: bool,
    cache: Path,
    identity: Mapping[str, object],
    side_by_side: bool = False,
    teacher_configs: Sequence[TrainConfig] = (),
) -> tuple[FittedStage, list[FittedStage]]:
    """Stages 1 and 2, trained with ``config`` (the run's, with --stage-options) or reused: the warm start at the
    student's width ``dim`` and a teacher at twice it for each of ``teacher_configs`` (one per --teacher-options
    string; none given: ``config``), for ``best_teacher`` to choose from.

    None needs another, so with ``side_by_side`` the teachers train in other processes while this one trains the
    warm start: one small model leaves most of a GPU idle. A stage that another run is training (it holds the
    stage's lock) is waited for and reused rather than trained twice."""
    key = {"dataset": dict(identity), "fingerprint": fingerprint(data), "refit": with_refit, "format": STAGE_FORMAT}
    warm = _plan("warm_start", 1, stage_config(config, dim), data, cache, key)
    plans = [_plan("teacher", 2, stage_config(c, 2 * dim), data, cache, key) for c in teacher_configs or [config]]
    teachers = list({plan.path: plan for plan in plans}.values())  # a configuration given twice trains once
    trained: dict[Path, tuple[float, int, float | None]] = {}
    with ExitStack() as cleanup:  # each stage's lock is let go once it is saved; other processes are waited for
        claimed = [(plan, cleanup.enter_context(lock)) for plan in (warm, *teachers) if (lock := _claim(plan))]
        here, beside = (claimed[:1], claimed[1:]) if side_by_side else (claimed, [])
        # Workers start on submit: none when nothing trains beside.
        pool = cleanup.enter_context(ProcessPoolExecutor(max(1, len(beside)), mp_context=get_context("spawn")))
        futures = [(plan, pool.submit(_train_stage, data, plan, with_refit)) for plan, _ in beside]
        for plan, lock in here:
            trained[plan.path] = _train_stage(data, plan, with_refit)
            lock.close()
        for plan, future in futures:
            trained[plan.path] = future.result()
    return _resolved(data, warm, trained, with_refit), [_resolved(data, t, trained, with_refit) for t in teachers]


@dataclass(frozen=True)
class _StagePlan:
    """One fp stage to train or reuse: its configuration and its cache file."""

    name: str  # "warm_start" | "teacher"
    number: int
    config: TrainConfig
    path: Path

    @property
    def title(self) -> str:
        what = f"fp d={self.config.model.dim} {self.name.replace('_', ' ')}"
        return f"stage {self.number}/3: {what}" + (f" ({describe(self.config)})" if self.number == 2 else "")

    @contextmanager
    def lock(self, *, wait: bool) -> Iterator[bool]:
        """Held while the stage trains, so that runs sharing a cache train it once; yields whether it was taken
        (with ``wait``, always, once the run holding it lets go). The lock files stay (removing one races with a
        run about to take it)."""
        locks = self.path.parent / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{self.path.name}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                log.info("%s: another run is training it; waiting for %s", self.title, self.path)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield True


def _plan(
    name: str, number: int, config: TrainConfig, data: Dataset, cache: Path, key: Mapping[str, object]
) -> _StagePlan:
    """The stage's cache file is named by a hash of the data and the stage's training configuration."""
    text = json.dumps(dict(key) | {"train": config.to_json()}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return _StagePlan(name, number, config, cache / f"{data.name}-fp-d{config.model.dim}-{digest}.pt")


def _claim(plan: _StagePlan) -> ExitStack | None:
    """The stage's lock, held, when this run is to train it: not saved yet and nobody else training it."""
    if plan.path.is_file():
        return None
    held = ExitStack()
    if held.enter_context(plan.lock(wait=False)) and not plan.path.is_file():  # another run may save it meanwhile
        return held
    held.close()
    return None


def _train_stage(data: Dataset, plan: _StagePlan, with_refit: bool) -> tuple[float, int, float | None]:
    """Train and save atomically (an interrupted run leaves no half file to reuse); the seconds and epochs it
    took and its validation score. Also the entry point of the other processes of ``side_by_side``, which log like
    the first."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s: training, saved to %s", plan.title, plan.path)
    result, stages = fit(data, plan.config, with_refit=with_refit)
    save_stages(plan.path, data.name, stages, layers=plan.config.model.layers,
                temperature=logit_temperature(plan.config.optim.loss, plan.config.optim.temperature))  # fmt: skip
    return result.train_seconds, result.best_epoch + 1, stages["select"].valid


def _resolved(
    data: Dataset, plan: _StagePlan, trained: Mapping[Path, tuple[float, int, float | None]], with_refit: bool
) -> FittedStage:
    """The stage as this run trained it, or the saved one: waited for while another run trains it, trained here
    if that run failed."""
    if plan.path not in trained:
        with plan.lock(wait=True):
            if not plan.path.is_file():
                trained = {plan.path: _train_stage(data, plan, with_refit)}
    if plan.path in trained:
        seconds, epochs, valid = trained[plan.path]
        return FittedStage(plan.name, plan.config, plan.path, cached=False, seconds=seconds, epochs=epochs, valid=valid)
    dim = plan.config.model.dim
    saved = load_stage(plan.path, "select", dataset=data.name, n_nodes=data.n_users + data.n_items, dim=dim)
    log.info("%s: cached %s", plan.title, plan.path)
    return FittedStage(plan.name, plan.config, plan.path, cached=True, seconds=saved.seconds, epochs=saved.epochs,
                       valid=saved.valid)  # fmt: skip


def student_options(
    config: TrainConfig, warm: FittedStage, teacher: FittedStage, given: frozenset[str]
) -> dict[str, object]:
    """Stage 3's options over the command line's: the stage files, and the best recipe's settings not ``given``."""
    options: dict[str, object] = {"warm_start_from": warm.path, "teacher": teacher.path}
    if config.model.bits == 2:
        options |= {name: value for name, value in TWO_BIT_DEFAULTS.items() if name not in given}
    log.info("stage 3/3: %s d=%d student, warm start %s, teacher %s", config.model.method, config.model.dim,
             warm.path.name, teacher.path.name)  # fmt: skip
    return options
