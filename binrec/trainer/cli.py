"""`recsys-train`: load a dataset, train one method, export a bundle, print a short result table."""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from binrec.index.bundle import BundleError
from binrec.trainer.data import DatasetError, SyntheticConfig, load_dataset
from binrec.trainer.distillation import DistillationConfig
from binrec.trainer.distributed import World, main_first, start, stop
from binrec.trainer.export import export_bundle
from binrec.trainer.objectives import LOSS_KINDS
from binrec.trainer.quantization import METHODS, make_quantizer
from binrec.trainer.sampling import SAMPLING_MODES
from binrec.trainer.train import TrainConfig, TrainResult, refit, train
from binrec.trainer.warm_start import SavedStage, Stage, save_stages


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="recsys-train",
        description="Train a LightGCN recommender with a quantizer and publish a servable bundle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="synthetic",
        help="'synthetic', a dataset name under --data-dir, or a path (LightGCN folder, .inter or .csv file)",
    )
    data.add_argument(
        "--data-dir", type=Path, default=None, help="where named datasets live (env RECSYS_DATA_DIR, else ./data)"
    )
    data.add_argument("--dataset-url", default=None, help="download the named dataset from here if it is not local")
    data.add_argument("--sha256", default=None, help="expected sha256 of the download (required with --dataset-url)")
    data.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of each user's train items held out for validation"
    )
    data.add_argument("--synthetic-users", type=int, default=SyntheticConfig.n_users, help="synthetic dataset: users")
    data.add_argument("--synthetic-items", type=int, default=SyntheticConfig.n_items, help="synthetic dataset: items")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--method",
        choices=list(METHODS),
        default=defaults.method,
        help="; ".join(f"{name}: {text}" for name, text in METHODS.items()),
    )
    model.add_argument("--bits", type=int, choices=[1, 2], default=None, help="code bits per dimension (hq only)")
    model.add_argument(
        "--user-bits",
        type=int,
        choices=[1, 2],
        default=None,
        help="hq only: users' code bits when above --bits (asymmetric codes: 2-bit users score 1-bit items exactly; "
        "the index keeps the items' bits)",
    )
    model.add_argument(
        "--item-scales",
        action="store_true",
        help="hq only: each item's levels times its own magnitude (one float per item beside its code; served by "
        "Hamming candidates re-ranked exactly with it)",
    )
    model.add_argument(
        "--warm-start",
        action="store_true",
        help="start a quantized method from a full-precision pre-training stage (gnaq always does)",
    )
    model.add_argument(
        "--warm-start-from",
        type=Path,
        default=None,
        help="start a quantized method from the file an fp run wrote with --save-warm-start (implies --warm-start)",
    )
    model.add_argument(
        "--pretrain-epochs",
        type=int,
        default=defaults.pretrain_epochs,
        help="most epochs of the full-precision stage (gnaq, --warm-start); it stops early on validation",
    )
    model.add_argument(
        "--dim", type=int, default=defaults.dim, help="embedding size (a multiple of 8 for binary codes)"
    )
    model.add_argument("--layers", type=int, default=defaults.layers, help="LightGCN propagation layers K")
    model.add_argument(
        "--input-layer",
        choices=["table", "hash"],
        default=defaults.input_layer,
        help="ego embeddings from an n × d table, or decoded from fixed adjacency hash codes (Yeh et al. KDD'22)",
    )
    model.add_argument("--hash-bits", type=int, default=defaults.hash_bits, help="hash code bits per node")
    model.add_argument("--hash-groups", type=int, default=defaults.hash_groups, help="codebooks the code splits into")
    model.add_argument("--hash-hidden", type=int, default=defaults.hash_hidden,
                       help="width of the hashed decoder's MLP (0: the embedding size)")  # fmt: skip
    model.add_argument("--hash-depth", type=int, default=defaults.hash_depth, help="hidden layers of that MLP")
    model.add_argument("--hash-residual", type=int, default=defaults.hash_residual,
                       help="per-node residual dimensions beside the decoded code (0: none)")  # fmt: skip
    model.add_argument(
        "--hash-hops",
        type=int,
        nargs="+",
        default=list(defaults.hash_hops),
        help="message-passing steps the hash code sketches: 0 the raw adjacency row, h >= 1 the row of the "
        "normalised adjacency smoothed h times (users and items share one projection); several split the bits",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs")
    optim.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="BPR triples per step and process (under torchrun a step trains world size × this many)",
    )
    optim.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    optim.add_argument("--reg", type=float, default=defaults.reg, help="L2 weight on the batch's ego embeddings")
    optim.add_argument(
        "--loss",
        choices=LOSS_KINDS,
        default=defaults.loss,
        help="'bpr': each positive against its one negative; 'softmax': against all of the batch's negatives",
    )
    optim.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="divides the softmax's logits (smaller: harder negatives weigh more); also the distilled student's",
    )
    optim.add_argument(
        "--softmax-negatives",
        type=int,
        default=defaults.softmax_negatives,
        help="negatives each user is compared with in the softmax and the distillation: the first N of the "
        "batch's (0: all --batch-size of them)",
    )
    distill = parser.add_argument_group("distillation (rank like a full-precision teacher)")
    distill.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="an fp run's --save-warm-start file (any --dim, same --layers): add KL(teacher || student) over each "
        "user's list of the teacher's top unseen items and the batch's negatives",
    )
    distill.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term")
    distill.add_argument("--distill-top", type=int, default=20, help="teacher's top unseen items per user in the list")
    distill.add_argument(
        "--distill-temperature",
        type=float,
        default=None,
        help="divides the teacher's inner products (default: --temperature with the softmax loss, else 1)",
    )
    optim.add_argument(
        "--sampling",
        choices=SAMPLING_MODES,
        default=defaults.sampling,
        help="BPR positives: 'user' draws users uniformly (LightGCN), 'interaction' visits every pair once per epoch",
    )
    optim.add_argument("--eval-every", type=int, default=defaults.eval_every, help="epochs between validations")
    optim.add_argument(
        "--patience", type=int, default=defaults.patience, help="validations without gain before stopping"
    )
    optim.add_argument(
        "--lr-decay-patience",
        type=int,
        default=defaults.lr_decay_patience,
        help="validations without gain before the learning rate is multiplied by --lr-decay-factor (0: never)",
    )
    optim.add_argument("--lr-decay-factor", type=float, default=defaults.lr_decay_factor, help="learning-rate decay")
    optim.add_argument("--lr-decays", type=int, default=defaults.lr_decays, help="most learning-rate decays")
    optim.add_argument(
        "--refit",
        action="store_true",
        help="after validation picks the epoch count, retrain on train + validation for that many epochs",
    )
    optim.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    optim.add_argument(
        "--grad-sync",
        choices=["allreduce", "ddp"],
        default=defaults.grad_sync,
        help="under torchrun: one all-reduce per gradient after backward, or DistributedDataParallel's hooks",
    )
    optim.add_argument(
        "--grad-compression",
        choices=["none", "fp16", "bf16"],
        default=defaults.grad_compression,
        help="under torchrun: all-reduce gradients in 16 bits (half the traffic, slightly noisier steps)",
    )
    optim.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        help="on a GPU, launch every step's kernels from Python instead of replaying one captured CUDA graph",
    )
    optim.add_argument(
        "--stop-at-metric",
        type=float,
        default=None,
        help="stop once validation Recall@20 reaches this (records target_seconds: time-to-quality benchmarks)",
    )
    optim.add_argument("--seed", type=int, default=defaults.seed, help="seed for init, sampling and the split")
    optim.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    out = parser.add_argument_group("output")
    out.add_argument("--bundle-root", type=Path, default=Path("var/bundles"), help="bundles are published here")
    out.add_argument("--no-make-current", action="store_true", help="publish without pointing CURRENT at the bundle")
    out.add_argument("--checkpoint-dir", type=Path, default=None, help="write resumable checkpoints here")
    out.add_argument("--resume", action="store_true", help="resume from --checkpoint-dir/last.pt")
    out.add_argument(
        "--log-level",
        choices=["debug", "info", "warning"],
        default="info",
        help="debug adds a line per epoch (step time, host time to queue it) from every rank",
    )
    out.add_argument("--results-json", type=Path, default=None, help="append a result record to this JSON list")
    out.add_argument(
        "--save-warm-start",
        type=Path,
        default=None,
        help="fp only: save the trained ego embeddings for quantized runs' --warm-start-from",
    )
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


def _saved(result: TrainResult, seconds: float) -> SavedStage:
    """A full-precision model's ego embeddings and what they cost, for --save-warm-start."""
    with torch.no_grad():
        ego = result.model.inputs().detach()
    return SavedStage(ego=ego, seconds=seconds, epochs=result.best_epoch + 1)


def distillation_config(args: argparse.Namespace) -> DistillationConfig | None:
    if args.teacher is None:
        return None
    if not args.teacher.is_file():
        raise ValueError(f"--teacher: no such file: {args.teacher}")
    default_temperature = args.temperature if args.loss == "softmax" else 1.0
    return DistillationConfig(
        teacher=args.teacher,
        weight=args.distill_weight,
        top=args.distill_top,
        temperature=args.distill_temperature if args.distill_temperature is not None else default_temperature,
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The options whose names are TrainConfig's fields, as given; the distillation from its own options."""
    given = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if hasattr(args, field.name)
    }
    return TrainConfig(**given | {"hash_hops": tuple(args.hash_hops), "distillation": distillation_config(args)})


def run(args: argparse.Namespace, world: World) -> int:
    config = train_config(args)
    if args.results_json is not None:
        _read_records(args.results_json)  # refuse a file we could not append to before training, not after
    if args.save_warm_start is not None and args.method != "fp":
        raise ValueError("--save-warm-start saves a full-precision stage: use it with --method fp")
    if args.warm_start_from is not None and args.method == "fp":
        raise ValueError("--warm-start-from starts a quantized method: use it with a --method other than fp")
    if args.warm_start_from is not None and not args.warm_start_from.is_file():
        raise ValueError(f"--warm-start-from: no such file: {args.warm_start_from}")
    quantizer = make_quantizer(
        args.method, args.dim, args.layers, bits=args.bits, user_bits=args.user_bits, item_scales=args.item_scales
    )
    if quantizer.layout.is_binary and args.dim % 8:
        raise ValueError(f"--dim must be a multiple of 8 for binary codes, got {args.dim}")
    synthetic = SyntheticConfig(n_users=args.synthetic_users, n_items=args.synthetic_items, seed=args.seed)
    with main_first(world):  # one rank downloads and splits; the others then read its files
        data = load_dataset(
            args.dataset,
            data_dir=args.data_dir,
            url=args.dataset_url,
            sha256=args.sha256,
            val_fraction=args.val_fraction,
            synthetic=synthetic,
        )
    logging.getLogger(__name__).info(data.summary())
    result = train(data, config)
    stages: dict[Stage, SavedStage] = {"select": _saved(result, result.train_seconds)}
    if args.refit:
        selected_seconds = result.train_seconds
        result = refit(data, config, result)
        stages["refit"] = _saved(result, result.train_seconds - selected_seconds)  # the refit's own time
    if not world.main:
        return 0  # rank 0 writes the warm start, the bundle and the record
    if args.save_warm_start is not None:
        save_stages(args.save_warm_start, data.name, stages)
    report = export_bundle(result, data, config, args.bundle_root, make_current=not args.no_make_current)
    record: dict[str, object] = {
        "dataset": data.name,
        "method": config.method if config.input_layer == "table" else f"hash+{config.method}",
        "input_layer": config.input_layer,
        "input_parameters": sum(p.numel() for p in result.model.inputs.parameters()),
        "table_parameters": (data.n_users + data.n_items) * config.dim,  # what an embedding table would hold
        **(
            {
                "hash_bits": config.hash_bits,
                "hash_groups": config.hash_groups,
                "hash_hops": list(config.hash_hops),
                "hash_hidden": config.hash_hidden,
                "hash_depth": config.hash_depth,
                "hash_residual": config.hash_residual,
            }
            if config.input_layer == "hash"
            else {}
        ),
        "dim": config.dim,
        "layers": config.layers,
        "lr": config.lr,
        "reg": config.reg,
        "loss": config.loss,
        "temperature": config.temperature,
        "softmax_negatives": config.softmax_negatives,
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
        "user_bits": config.user_bits,
        "item_scales": config.item_scales,
        **{k: round(v, 5) for k, v in report.test_served.items()},
        **{f"valid_{k}": round(v, 5) for k, v in result.best_valid.items()},  # what chose the epoch
        **{f"exact_{k}": round(v, 5) for k, v in report.test_device.items()},
        "bytes_per_node": report.bytes_per_node,
        "item_bytes": report.item_bytes,
        "train_seconds": round(result.train_seconds, 1),
        "world_size": result.world_size,
        "batch_size": config.batch_size * result.world_size,
        "samples_per_second": round(result.samples_per_second, 1),
        "first_epoch_seconds": round(result.first_epoch_seconds, 3),
        "grad_sync": config.grad_sync,
        "grad_compression": config.grad_compression,
        "target_seconds": None if result.target_seconds is None else round(result.target_seconds, 1),
        "cuda_graph": result.cuda_graph,
        "best_epoch": result.best_epoch,
        "refit": bool(args.refit),
        "warm_start": bool(args.warm_start or args.warm_start_from),
        "sampling": config.sampling,
        "lr_milestones": result.lr_milestones,
        "peak_gpu_mb": round(result.peak_gpu_mb, 1),
        "device": result.device,
        "commit": _commit(),
        "model_version": report.model_version,
    }
    if args.results_json is not None:
        _append_record(args.results_json, record)
    print(f"\nbundle: {report.bundle_path}")
    print(f"{'metric':<12} {'test (served path)':>18}")
    for name, value in report.test_served.items():
        print(f"{name:<12} {value:>18.4f}")
    print(f"{'train s':<12} {result.train_seconds:>18.1f}")
    print(f"{'device':<12} {result.device:>18}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        return run(args, world)
    except (DatasetError, BundleError, ValueError) as error:
        print(f"recsys-train: error: {error}", file=sys.stderr)
        return 2
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
