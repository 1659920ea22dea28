"""Scaling over GPUs: data-parallel training throughput / time to quality, and sharded retrieval queries/s.

    python -m benchmarks.scaling --data-dir ../shared/data --gpus 1 2 \
        --train-extra "--max-minutes 4" --n-items 100000000 1000000000 --batches 1024
    python -m benchmarks.scaling --report-only

Training: `recsys-train --method fp` on Gowalla under torchrun with 1, 2, … processes (one per GPU), each
rank taking --batch-size triples a step (the global batch grows with the GPU count), stopped when
validation Recall@20 reaches --target. Records: kind=train, gpus, samples_per_second (BPR triples a second,
all ranks, over the epochs after the first), first_epoch_seconds (the first epoch, start-up included:
CUDA-graph warm-up and capture, communicator set-up), target_seconds (wall time, validations included, until
the target was reached; null if not), batch_size (global), lr, recall@20 at the stop, device, commit.

Retrieval: random 256-bit codes generated on each GPU (no host copy: a billion items is 32 GB), one Triton
shard per GPU behind `ShardedBackend`, exact top-k merged on the host. Records: kind=retrieval, gpus,
backend, n_items, code_bits, batch, k, median_ms, qps, memory_bytes, device, commit.

Appends to --out (benchmarks/results/scaling.json), prints a table with speed-ups over one GPU and draws
--plot (speed-up against GPU count, beside the ideal line).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, benchmark_parser, commit
from benchmarks.retrieval import device_name, random_codes, random_word_major, timed

PROTOCOL = "--epochs 1000 --eval-every 5 --patience 6 --lr-decay-patience 3 --batch-size 8192 --lr 5e-3"


LR_SCALING: dict[str, Callable[[int], float]] = {
    "none": lambda gpus: 1.0,
    "sqrt": lambda gpus: float(gpus) ** 0.5,
    "linear": lambda gpus: float(gpus),
}


def base_lr(args: argparse.Namespace) -> float:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--lr", type=float, default=1e-3)
    return float(options.parse_known_args(shlex.split(f"{args.protocol} {args.train_extra}"))[0].lr)


def scaled_lr(gpus: int, args: argparse.Namespace) -> list[str]:
    """The global batch grows with the GPU count; --lr-scaling optionally grows the learning rate with it."""
    return [] if args.lr_scaling == "none" else ["--lr", f"{base_lr(args) * LR_SCALING[args.lr_scaling](gpus):.6g}"]


def train_run(gpus: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any] | None:
    results = workdir / f"train-{gpus}.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
        "-m", "trainer.cli", "--method", "fp", "--dataset", args.dataset, "--data-dir", str(args.data_dir),
        *shlex.split(args.protocol), *shlex.split(args.train_extra), *scaled_lr(gpus, args),
        "--stop-at-metric", str(args.target),
        "--bundle-root", str(workdir / f"bundles-{gpus}"), "--results-json", str(results),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    log = (args.logs / f"train-{gpus}gpu-lr-{args.lr_scaling}.log").open("w") if args.logs else None
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // gpus))}
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    if done.returncode != 0 or not results.is_file():
        print(f"training on {gpus} GPU(s) failed (exit {done.returncode}); see the log", flush=True)
        return None
    (result,) = json.loads(results.read_text())
    lr = base_lr(args) * LR_SCALING[args.lr_scaling](gpus)
    row = {
        "kind": "train",
        "gpus": gpus,
        "dataset": args.dataset,
        "samples_per_second": result["samples_per_second"],
        "first_epoch_seconds": result.get("first_epoch_seconds"),
        "target": args.target,
        "target_seconds": result["target_seconds"],
        "train_seconds": result["train_seconds"],
        "epochs": result["best_epoch"] + 1,
        "batch_size": result["batch_size"],
        "lr": lr,
        "lr_scaling": args.lr_scaling,
        "grad_sync": result.get("grad_sync", "ddp"),
        "grad_compression": result.get("grad_compression", "none"),
        "cuda_graph": result.get("cuda_graph", False),
        "recall@20": result["exact_recall@20"],
        "device": result["device"],
        "commit": commit(),
    }
    print(json.dumps(row), flush=True)
    return row


def gpu_catalogue(n_items: int, n_bytes: int, gpus: int, seed: int) -> Any:
    """Random codes made on each GPU as one shard apiece (the host never holds the catalogue)."""

    from index.retrieval.sharded import ShardedBackend, shard_bounds
    from index.retrieval.triton_backend import TritonBackend

    shards = []
    for gpu, (start, stop) in enumerate(shard_bounds(n_items, gpus)):
        words = random_word_major(stop - start, n_bytes, f"cuda:{gpu}", seed + gpu)
        shards.append(TritonBackend.from_word_major(words, n_bytes))
    return shards[0] if gpus == 1 else ShardedBackend.from_shards(shards)


def retrieval_runs(gpus: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    rows = []
    for n_items in args.n_items:
        try:
            backend = gpu_catalogue(n_items, args.bits // 8, gpus, args.seed)
        except (RuntimeError, ValueError) as error:  # CUDA out of memory is a RuntimeError
            print(f"skip {n_items:,} items on {gpus} GPU(s): {error}", flush=True)
            torch.cuda.empty_cache()
            continue
        for batch in args.batches:
            queries = random_codes(batch, args.bits // 8, seed=batch + 1)
            ms, runs, _ = timed(partial(backend.search, queries, args.k), args.repeats, args.budget)
            row = {
                "kind": "retrieval", "gpus": gpus, "backend": backend.name, "n_items": n_items, "code_bits": args.bits,
                "batch": batch, "k": args.k, "median_ms": round(ms, 3), "qps": round(1000 * batch / ms, 1),
                "memory_bytes": backend.memory_bytes, "runs": runs, "device": device_name(), "commit": commit(),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
        del backend
        torch.cuda.empty_cache()
    return rows


def throughput(row: dict[str, Any]) -> float:
    return float(row["samples_per_second"] if row["kind"] == "train" else row["qps"])


def workload(row: dict[str, Any]) -> str:
    if row["kind"] == "train":
        scaling, compression = row.get("lr_scaling", "none"), row.get("grad_compression", "none")
        variant = f"lr scaling {scaling}, {row.get('grad_sync', 'ddp')} sync"
        variant += f", {compression} gradients" if compression != "none" else ""
        variant += ", CUDA-graph steps" if row.get("cuda_graph") else ""
        return f"train {row['dataset']} fp (per-GPU batch {row['batch_size'] // row['gpus']}, {variant})"
    return f"retrieval {row['n_items']:,} × {row['code_bits']}-bit, batch {row['batch']}, k {row['k']}"


def baseline(row: dict[str, Any]) -> tuple[str, str, str]:
    """What a row's speed-up is over: the one-GPU run of the same work from the same call (same commit and
    machine; one-GPU throughput varies ±8 % between machines). lr scaling and compression need 2+ GPUs."""
    if row["kind"] == "train":
        graphed = " graphed" if row.get("cuda_graph") else ""
        return row["device"], row["commit"], f"train {row['dataset']} {row['batch_size'] // row['gpus']}{graphed}"
    return row["device"], row["commit"], workload(row)


def report(records: list[dict[str, Any]], plot: Path | None) -> None:
    ones: dict[tuple[str, str, str], list[float]] = {}
    for row in records:
        if row["gpus"] == 1:
            ones.setdefault(baseline(row), []).append(throughput(row))
    base = {key: statistics.mean(values) for key, values in ones.items()}  # repeated one-GPU runs: their mean
    print("| device | commit | workload | GPUs | throughput | speed-up | time to target (s) |")
    print("|---|---|---|---|---|---|---|")
    speedups: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(records, key=lambda r: (r["device"], r["kind"], r["commit"], workload(r), r["gpus"])):
        one = base.get(baseline(row))
        speedup = throughput(row) / one if one else float("nan")
        speedups.setdefault(workload(row), []).append((row["gpus"], speedup))
        unit = "triples/s" if row["kind"] == "train" else "queries/s"
        reached = row.get("target_seconds")
        target = "" if row["kind"] != "train" else ("not reached" if reached is None else f"{reached:.0f}")
        print(f"| {row['device']} | {row['commit']} | {workload(row)} | {row['gpus']} | {throughput(row):,.0f} {unit} "
              f"| {speedup:.2f}× | {target} |")  # fmt: skip
    if plot is None or not speedups:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    most = max(g for points in speedups.values() for g, _ in points)
    axis.plot([1, most], [1, most], linestyle="--", color="grey", label="ideal")
    for name, points in sorted(speedups.items()):
        axis.plot(*zip(*sorted(points), strict=True), marker="o", label=name)
    axis.set(xlabel="GPUs", ylabel="speed-up over 1 GPU", title="Scaling over GPUs")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(plot, dpi=110)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to run on")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RECSYS_DATA_DIR", "../shared/data")))
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--target", type=float, default=0.175, help="validation Recall@20 that stops training")
    parser.add_argument("--protocol", default=PROTOCOL, help="recsys-train options (the #3 protocol, no refit)")
    parser.add_argument(
        "--lr-scaling", choices=sorted(LR_SCALING), default="none", help="learning rate × f(GPUs) (bigger batches)"
    )
    parser.add_argument("--train-extra", default="", help="more recsys-train options, e.g. '--max-minutes 4'")
    parser.add_argument("--n-items", type=int, nargs="+", default=[100_000_000, 1_000_000_000])
    parser.add_argument("--bits", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1024])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed runs per row at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", type=Path, default=None, help="write each training run's log here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scaling.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/scaling.png")
    parser.add_argument("--report-only", action="store_true", help="print the table and plot from --out")
    args = parser.parse_args()

    records: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.is_file() else []
    if not args.report_only:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
        new: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            for gpus in args.gpus if not args.skip_train else []:
                row = train_run(gpus, args, Path(tmp))
                new += [row] if row else []
        for gpus in args.gpus if not args.skip_retrieval else []:
            new += retrieval_runs(gpus, args)
        records += new
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2) + "\n")
        report(new, None)
        print()
    report(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
