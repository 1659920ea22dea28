"""`recsys-train`: load a dataset, train one method, export a bundle, print a short result table."""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

import numpy as np

from index.bundle import BundleError
from index.command_line import ENDINGS, check_output_directory, check_output_file, raise_on_sigterm, say_ending
from index.hash_codes import check_grouping
from index.out_of_memory import out_of_memory
from trainer.config import (
    CheckpointConfig,
    InputLayerConfig,
    ModelConfig,
    OptimConfig,
    PretrainingConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from trainer.data import Dataset, DatasetError, SyntheticConfig, load_dataset
from trainer.data.synthetic import MIN_ITEMS_PER_USER
from trainer.distillation import DistillationOptions
from trainer.distributed import World, main_first, start, stop
from trainer.evaluate import evaluation_users, held_out_of
from trainer.export import ExportReport, export_bundle
from trainer.metering import PhaseClock
from trainer.options import add_options, flag_of, from_args, option, options_of
from trainer.quantization import check_options
from trainer.recipe import AUTO, RecipeOptions, best_teacher, check_recipe, fit, fp_stages, student_options
from trainer.train import TrainResult, pick_device
from trainer.warm_start import logit_temperature, save_stages

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SMALLER_RUN = (
    "make the run smaller (--batch-size, --eval-users, --dim; for a large graph --input-layer hash, with "
    "--decode-chunk on a GPU) or give it a larger device"
)


@dataclass(frozen=True)
class DataOptions:
    """Which interactions to train on and how validation is split from them."""

    dataset: str = option(
        "synthetic", "'synthetic', a dataset name under --data-dir, or a path (LightGCN folder, .inter or .csv file)"
    )
    data_dir: Path | None = option(None, "where named datasets live (env RECSYS_DATA_DIR, else ./data)")
    dataset_url: str | None = option(None, "download the named dataset from here if it is not local")
    sha256: str | None = option(None, "expected sha256 of the download (required with --dataset-url)")
    val_fraction: float = option(0.1, "share of each user's train items held out for validation", at_least=0, below=1)
    synthetic_users: int = option(SyntheticConfig.n_users, "synthetic dataset: users", at_least=1)
    synthetic_items: int = option(SyntheticConfig.n_items, "synthetic dataset: items", at_least=MIN_ITEMS_PER_USER)


@dataclass(frozen=True)
class OutputOptions:
    """What the run publishes and records once validation has selected the model."""

    refit: bool = option(
        False, "after validation picks the epoch count, retrain on train + validation for that many epochs"
    )
    bundle_root: Path = option(Path("var/bundles"), "bundles are published here")
    no_make_current: bool = option(False, "publish without pointing CURRENT at the bundle")
    log_level: Literal["debug", "info", "warning"] = option(
        "info", "debug adds a line per epoch (step time, host time to queue it) from every rank"
    )
    results_json: Path | None = option(None, "append a result record to this JSON list")
    save_warm_start: Path | None = option(
        None, "fp only: save the trained ego embeddings for quantized runs' --warm-start-from"
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything ``recsys-train`` was asked: the data, the training run, and what to publish."""

    data: DataOptions
    train: TrainConfig
    output: OutputOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """Each section from its options, by field name (trainer.options)."""
        optim = from_args(OptimConfig, args)
        train = TrainConfig(
            model=from_args(ModelConfig, args),
            input=from_args(InputLayerConfig, args),
            pretraining=from_args(PretrainingConfig, args),
            optim=optim,
            schedule=from_args(ScheduleConfig, args),
            runtime=from_args(RuntimeConfig, args),
            checkpoint=from_args(CheckpointConfig, args),
            distillation=from_args(DistillationOptions, args).config(),
        )
        return cls(data=from_args(DataOptions, args), train=train, output=from_args(OutputOptions, args))


OPTION_GROUPS: tuple[tuple[str, type[DataclassInstance]], ...] = (
    ("data", DataOptions),
    ("model", ModelConfig),
    ("input layer", InputLayerConfig),
    ("warm start", PretrainingConfig),
    ("optimisation", OptimConfig),
    ("distillation (rank like a full-precision teacher)", DistillationOptions),
    ("schedule and stopping", ScheduleConfig),
    ("devices and distribution", RuntimeConfig),
    ("checkpoints", CheckpointConfig),
    ("output", OutputOptions),
    ("one-command recipe (--teacher auto)", RecipeOptions),
)


def build_parser() -> argparse.ArgumentParser:
    """One option group per configuration section; each option is declared once, on its field."""
    parser = argparse.ArgumentParser(
        prog="recsys-train",
        description="Train a LightGCN recommender with a quantizer and publish a servable bundle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for title, section in OPTION_GROUPS:
        add_options(parser.add_argument_group(title), section)
    return parser


def _commit() -> str:
    """The source revision, for result records; RECSYS_COMMIT wins where no .git travels (GPU machines)."""
    if os.environ.get("RECSYS_COMMIT"):
        return os.environ["RECSYS_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read_records(path: Path) -> list[object]:
    try:
        records = json.loads(path.read_text()) if path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--results-json {path}: not a JSON list ({error}); not overwriting it") from error
    if not isinstance(records, list):
        raise ValueError(f"--results-json {path}: holds a JSON {type(records).__name__}, not a list")
    return records


def _append_record(path: Path, record: dict[str, object]) -> None:
    """Append under an exclusive lock and replace atomically: benchmark runs share one results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = _read_records(path)
        records.append(record)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=2) + "\n")
        tmp.replace(path)


def given_options(argv: list[str] | None, refuse: Callable[[str], NoReturn] | None = None) -> frozenset[str]:
    """The options the command line set itself rather than left at their defaults: the recipe fills in the others.
    ``refuse``: what a parse error calls in place of argparse's usage and exit."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    if refuse is not None:
        parser.error = refuse  # type: ignore[method-assign,assignment]
    return frozenset(vars(parser.parse_args(argv)))


def inner_options(flag: str, text: str) -> tuple[list[str], frozenset[str]]:
    """The words of an option that carries other options (``--stage-options "--lr 1e-3"``) and the options they set,
    or one line naming it where they do not parse (argparse alone would print its usage and blame an option the
    user never typed)."""
    try:
        words = shlex.split(text)
    except ValueError as error:  # an unclosed quote
        raise ValueError(f"{flag} {text!r}: {error}") from None

    def refuse(message: str) -> NoReturn:
        raise ValueError(f"{flag} {text!r}: {message}")

    return words, given_options(words, refuse)


def inner_config(flag: str, args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """The run's options with ``argv`` (from ``flag``) over them, as a training configuration."""
    try:
        return RunConfig.from_args(build_parser().parse_args(argv, namespace=argparse.Namespace(**vars(args)))).train
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training run the parsed options describe."""
    return RunConfig.from_args(args).train


def check_run(config: RunConfig) -> None:
    """Refuse options that cannot work together before any data is loaded or trained on."""
    model, pretraining, output = config.train.model, config.train.pretraining, config.output
    pick_device(config.train.runtime.device)
    check_output_directory(output.bundle_root, "--bundle-root")  # every output before training, not after it
    if config.train.checkpoint.checkpoint_dir is not None:
        check_output_directory(config.train.checkpoint.checkpoint_dir, "--checkpoint-dir")
    for flag, file in (("--results-json", output.results_json), ("--save-warm-start", output.save_warm_start)):
        if file is not None:
            check_output_file(file, flag)
    if output.results_json is not None:
        _read_records(output.results_json)  # refuse a file we could not append to before training, not after
    if output.save_warm_start is not None and model.method != "fp":
        raise ValueError("--save-warm-start saves a full-precision stage: use it with --method fp")
    if pretraining.warm_start_from is not None and model.method == "fp":
        raise ValueError("--warm-start-from starts a quantized method: use it with a --method other than fp")
    if pretraining.warm_start_from is not None and not pretraining.warm_start_from.is_file():
        raise ValueError(f"--warm-start-from: no such file: {pretraining.warm_start_from}")
    check_options(model.method, model.dim, bits=model.bits, user_bits=model.user_bits, item_scales=model.item_scales)
    hashing = config.train.input
    if hashing.input_layer == "hash":
        check_grouping(hashing.hash_bits, hashing.hash_groups, ("--hash-bits", "--hash-groups"))
    elif hashing.decode_chunk:
        raise ValueError("--decode-chunk decodes the hashed input layer: use it with --input-layer hash")


def result_record(
    config: TrainConfig, result: TrainResult, data: Dataset, report: ExportReport, output: OutputOptions
) -> dict[str, object]:
    """The run's line in --results-json: its settings, test and validation metrics, costs (benchmarks read it)."""
    model, hashing, optim, runtime = config.model, config.input, config.optim, config.runtime
    return {
        "dataset": data.name,
        "method": model.method if hashing.input_layer == "table" else f"hash+{model.method}",
        "input_layer": hashing.input_layer,
        "input_parameters": sum(p.numel() for p in result.model.inputs.parameters()),
        "table_parameters": (data.n_users + data.n_items) * model.dim,  # what an embedding table would hold
        **(
            {
                "hash_bits": hashing.hash_bits,
                "hash_groups": hashing.hash_groups,
                "hash_hops": list(hashing.hash_hops),
                "hash_hidden": hashing.hash_hidden,
                "hash_depth": hashing.hash_depth,
                "hash_residual": hashing.hash_residual,
                "decode_chunk": hashing.decode_chunk,
            }
            if hashing.input_layer == "hash"
            else {}
        ),
        "dim": model.dim,
        "layers": model.layers,
        "lr": optim.lr,
        "reg": optim.reg,
        "loss": optim.loss,
        "temperature": optim.temperature,
        "softmax_negatives": optim.softmax_negatives,
        **(
            {
                "teacher": str(config.distillation.teacher),
                "distill_weight": config.distillation.weight,
                "distill_top": config.distillation.top,
                "distill_temperature": config.distillation.temperature,
            }
            if config.distillation is not None
            else {}
        ),
        "bits": result.quantizer.bits,
        "user_bits": model.user_bits,
        "item_scales": model.item_scales,
        **{k: round(v, 5) for k, v in report.test_served.items()},
        **{f"valid_{k}": round(v, 5) for k, v in result.best_valid.items()},  # what chose the epoch
        **{f"exact_{k}": round(v, 5) for k, v in report.test_device.items()},
        "bytes_per_node": report.bytes_per_node,
        "item_bytes": report.item_bytes,
        "train_seconds": round(result.train_seconds, 1),
        "world_size": result.world_size,
        "batch_size": optim.batch_size * result.world_size,
        "samples_per_second": round(result.samples_per_second, 1),
        "first_epoch_seconds": round(result.first_epoch_seconds, 3),
        "grad_sync": runtime.grad_sync,
        "grad_compression": runtime.grad_compression,
        "target_seconds": None if result.target_seconds is None else round(result.target_seconds, 1),
        "cuda_graph": result.cuda_graph,
        "best_epoch": result.best_epoch,
        "refit": output.refit,
        "warm_start": bool(config.pretraining.warm_start or config.pretraining.warm_start_from),
        "sampling": optim.sampling,
        "lr_milestones": result.lr_milestones,
        "peak_gpu_mb": round(result.peak_gpu_mb, 1),
        "peak_gpu_reserved_mb": round(result.peak_gpu_reserved_mb, 1),
        "device": result.device,
        "commit": _commit(),
        "model_version": report.model_version,
    }


def sampled_test(data: Dataset, config: TrainConfig) -> tuple[Dataset, dict[str, object]]:
    """With ``--eval-users``, the data whose test set holds only a seeded sample of its users (what the export
    ranks, on both paths, with standard errors) and the sample's size for the record; otherwise the data as it is
    and no record fields.

    Only the test matrix changes: the bundle's ids, seen items and cold-start graph are the whole data's."""
    count = config.schedule.eval_users
    users = evaluation_users(data.test, count, config.optim.seed)
    if count <= 0 or users.size == np.count_nonzero(np.diff(data.test.indptr)):
        return data, {}
    tested = dataclasses.replace(data, test=held_out_of(data.test, users))
    return tested, {"eval_users": count, "test_users": int(users.size)}


def run(args: argparse.Namespace, world: World, given: frozenset[str] = frozenset()) -> int:
    recipe = args.teacher == AUTO
    if recipe:
        args = argparse.Namespace(**(vars(args) | {"teacher": None}))  # the student's own options, stages aside
    run_config = RunConfig.from_args(args)
    check_run(run_config)
    recipe_options = from_args(RecipeOptions, args)
    # What steers the fp stages means nothing to a plain run: refused, not ignored (--stage-cache, a place, is
    # harmless there).
    steering = [f for f in options_of(RecipeOptions) if f.name != "stage_cache"]
    if not recipe and (stray := [flag_of(f) for f in steering if f.name in given]):
        raise ValueError(f"{', '.join(stray)}: only with --teacher auto, which trains the fp stages they steer")
    if recipe:
        check_output_directory(recipe_options.stage_cache, "--stage-cache")
        stage_argv, stage_given = inner_options("--stage-options", recipe_options.stage_options)
        teachers_argv = [inner_options("--teacher-options", text) for text in recipe_options.teacher_options]
        teacher_given = frozenset().union(*(given for _, given in teachers_argv))
        check_recipe(
            run_config.train, distributed=world.distributed, stage_options=stage_given, teacher_options=teacher_given
        )
        # Every stage's configuration, its bounds checked before any data is read.
        stage_train = inner_config("--stage-options", args, stage_argv)
        teacher_trains = [inner_config("--teacher-options", args, stage_argv + argv) for argv, _ in teachers_argv]
    options, config, output = run_config.data, run_config.train, run_config.output
    synthetic = SyntheticConfig(
        n_users=options.synthetic_users, n_items=options.synthetic_items, seed=config.optim.seed
    )
    clock = PhaseClock()
    with main_first(world):  # one rank downloads and splits; the others then read its files
        data = load_dataset(
            options.dataset,
            data_dir=options.data_dir,
            url=options.dataset_url,
            sha256=options.sha256,
            val_fraction=options.val_fraction,
            synthetic=synthetic,
        )
    clock.done("load")
    logging.getLogger(__name__).info(data.summary())
    stage_records: list[dict[str, object]] = []
    if recipe:
        identity = {k: v for k, v in vars(options).items() if k not in ("data_dir", "dataset_url", "sha256")}
        warm, teachers = fp_stages(
            data,
            stage_train,
            dim=config.model.dim,
            with_refit=output.refit,
            cache=recipe_options.stage_cache,
            identity=identity,
            side_by_side=recipe_options.stages_side_by_side and pick_device(stage_train.runtime.device).type == "cuda",
            teacher_configs=teacher_trains,
        )
        teacher = best_teacher(teachers)
        stage_records = [warm.record(data.name)]
        stage_records += [t.record(data.name) | {"selected": t is teacher} for t in teachers]
        args = argparse.Namespace(**(vars(args) | student_options(config, warm, teacher, given)))
        config = RunConfig.from_args(args).train
        clock.done("stages")
    result, saved = fit(data, config, with_refit=output.refit)
    clock.done("train")
    if not world.main:
        return 0  # rank 0 writes the warm start, the bundle and the record
    if output.save_warm_start is not None:
        save_stages(output.save_warm_start, data.name, saved, layers=config.model.layers,
                    temperature=logit_temperature(config.optim.loss, config.optim.temperature))  # fmt: skip
    tested, sample = sampled_test(data, config)
    report = export_bundle(
        result,
        tested,
        config,
        output.bundle_root,
        make_current=not output.no_make_current,
        stages=stage_records,
        spread=bool(sample),
    )
    clock.done("export")  # the test on both paths, codes, cold-start section, checksums, publish
    if output.results_json is not None:
        spread = {name: round(value, 5) for name, value in report.test_spread.items()}
        record = result_record(config, result, data, report, output) | sample | spread
        record["phase_seconds"] = clock.phases
        record["phase_host_peak_gib"] = clock.host_peaks
        record["export_seconds"] = report.phase_seconds
        for stage_record in stage_records:
            _append_record(output.results_json, stage_record)
        _append_record(output.results_json, {"stage": "student", **record} if recipe else record)
    print(f"\nbundle: {report.bundle_path}")
    print(f"{'metric':<12} {'test (served path)':>18}")
    for name, value in report.test_served.items():
        print(f"{name:<12} {value:>18.4f}")
    print(f"{'train s':<12} {result.train_seconds:>18.1f}")
    print(f"{'device':<12} {result.device:>18}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raise_on_sigterm()
    args = build_parser().parse_args(argv)
    given = given_options(argv)
    try:
        world = start(args.device)
    except (ValueError, RuntimeError) as error:
        print(f"recsys-train: error: could not join the torchrun process group: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if world.main and args.log_level != "warning" else logging.WARNING,
        format=f"%(asctime)s %(levelname)s %(name)s{f' [rank {world.rank}]' if world.distributed else ''}: %(message)s",
    )
    if args.log_level == "debug":
        logging.getLogger("trainer").setLevel(logging.DEBUG)  # the trainer's own lines, on every rank
    try:
        return run(args, world, given)
    except (DatasetError, BundleError, ValueError) as error:
        print(f"recsys-train: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if (allocation := out_of_memory(error)) is None:
            raise
        print(f"recsys-train: error: out of memory ({allocation}); {SMALLER_RUN}", file=sys.stderr)
        return 2
    except ENDINGS as error:
        return say_ending("recsys-train", error, interrupted="nothing half-written is left under --bundle-root")
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
