"""The whole pipeline at catalogue scale (issue #33), each stage the command a user types, each measured alike.

    python -m benchmarks.industrial_scale --users 1000000 --items 1000000 --device cuda --work-dir /scratch/ind
    python -m benchmarks.industrial_scale --users 100000 --items 100000 --device cpu --train-minutes 2

Stages, in order (``--stages`` picks some; a later one reads what an earlier one left in ``--work-dir``):

* ``generate``: ``recsys-generate`` writes ``synthetic-<users>x<items>.csv`` (power-law users, Zipf items,
  communities);
* ``load``: ``recsys-train``'s loader reads and splits that file, alone (``benchmarks.industrial_data``);
* ``train``: ``recsys-train --dataset FILE --input-layer hash --method hq --bits 2`` under a wall budget, validating on
  a seeded sample of users (``--eval-users``), then testing that many users on the served path, exporting and
  publishing the bundle; the record carries the validation curve and the trainer's own phase times;
* ``index``: ``recsys-index build`` on the published bundle;
* ``serve``: ``benchmarks.serve_start``: redis-server and ``recsys-serve`` on the bundle, time to ready, memory per
  process, a short ``/recommend`` load;
* ``capacity``: ``benchmarks.gpu_serving`` with this bundle as its main mode (every user's code in Redis, wrk's
  mix of requests at rising connection counts): the rate and tail latency the serving targets are stated in, so
  that they can be set beside the synthetic 10M catalogue's.

Every stage is a subprocess: ``wall_s`` is its wall time, ``peak_host_gb`` its peak resident set (``wait4``; the
largest of its process tree's members, as Linux reports it), ``peak_gpu_gb`` the most GPU memory in use while it ran
(``nvidia-smi``, sampled twice a second: the whole GPU, so nothing else may run on it), null without a GPU. One record
per stage is appended to benchmarks/results/industrial_scale.json; the run ends with a table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, append_records, benchmark_parser, commit, markdown_table, run_measured
from benchmarks.industrial_data import BYTES_PER_INTERACTION, run_stage

STAGES = ("generate", "load", "train", "index", "serve", "capacity")
# What the capacity row keeps of each of benchmarks.gpu_serving's steps.
CAPACITY_FIGURES = ("phase", "workers", "connections", "backend", "rate", "p50_ms", "p99_ms", "p999_ms", "errors")


class GpuMemory:
    """The most GPU memory in use while a stage runs, sampled from ``nvidia-smi`` in a thread (None without one)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
            done = subprocess.run(query, capture_output=True, text=True, check=False)
            reading = done.stdout.split()[:1] if done.returncode == 0 else []
            if reading and reading[0].replace(".", "", 1).isdigit():  # "[N/A]" and the like are no reading
                used = float(reading[0])
                self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)
            self._stop.wait(self.interval)


@dataclass
class Measured:
    """A finished stage command: what it cost and where its output went."""

    wall_s: float
    peak_host_gb: float
    peak_gpu_gb: float | None
    log: Path


def measured(command: list[str], log: Path, timeout: float) -> Measured:
    """Run one stage's command to its end, its output to ``log``: wall time, peak RSS (wait4) and peak GPU memory."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"$ {' '.join(command)}  > {log}", flush=True)
    with GpuMemory() as gpu, log.open("w") as handle:
        run = run_measured(command, timeout=timeout, env=environment, stdout=handle, stderr=subprocess.STDOUT)
    if run.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{command[2]} failed with exit code {run.returncode}: " + " / ".join(tail))
    peak_gpu = None if gpu.peak_mb is None else round(gpu.peak_mb / 1024, 2)
    return Measured(round(run.seconds, 1), round(run.peak_rss_bytes / 1e9, 3), peak_gpu, log)


def valid_curve(log: Path) -> list[dict[str, Any]]:
    """The validation points the trainer logged (``{"event": "valid", ...}``), in order."""
    curve = []
    for line in log.read_text(errors="replace").splitlines():
        start = line.find('{"event": "valid"')
        if start >= 0:
            point = json.loads(line[start:])
            curve.append({k: v for k, v in point.items() if k != "event"})
    return curve


def train_command(args: Any, data: Path, bundles: Path, records: Path) -> list[str]:
    return [
        sys.executable, "-m", "trainer.cli", "--dataset", str(data), "--input-layer", "hash", "--method", "hq",
        "--bits", "2", "--dim", str(args.dim), "--device", args.device, "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--eval-users", str(args.eval_users), "--eval-every", "1", "--epochs", "1000",
        "--patience", str(args.patience), "--max-minutes", str(args.train_minutes), "--bundle-root", str(bundles),
        "--results-json", str(records), *args.train_options.split(),
    ]  # fmt: skip


def train_figures(records: Path, log: Path) -> dict[str, Any]:
    """What the train stage adds to its row: the trainer's record (metrics, costs) and the validation curve."""
    record = json.loads(records.read_text())[-1]
    keep = ("recall@20", "recall@20_se", "ndcg@20", "exact_recall@20", "valid_recall@20", "test_users",
            "eval_users", "input_parameters", "table_parameters", "best_epoch", "train_seconds", "samples_per_second",
            "first_epoch_seconds", "batch_size", "peak_gpu_mb", "peak_gpu_reserved_mb", "item_bytes", "model_version",
            "phase_seconds", "export_seconds")  # fmt: skip
    figures = {k: record[k] for k in keep if k in record}
    if record.get("input_parameters"):
        figures["input_reduction"] = round(record["table_parameters"] / record["input_parameters"], 1)
    figures["valid_curve"] = valid_curve(log)
    return figures


def capacity(args: Any, bundles: Path, work: Path) -> tuple[Measured, dict[str, Any]]:
    """The ``capacity`` stage: ``benchmarks.gpu_serving`` serving only this bundle (its ``gowalla`` mode: any
    trained bundle), its steps (rate, p50/p99/p99.9 at each connection count) returned as the row's figures."""
    steps = work / "capacity.json"
    on_cpu = [] if args.device.startswith("cuda") else ["--cpu"]
    command = [sys.executable, "-m", "benchmarks.gpu_serving", *on_cpu, "--gowalla", str(bundles),
               "--main", "gowalla:auto" if on_cpu else "gowalla:triton", "--peers", "--work", str(work / "serving"),
               "--out", str(steps), *args.capacity_options.split()]  # fmt: skip
    run = measured(command, work / "capacity.log", args.timeout)
    report = json.loads(steps.read_text())
    figures = {
        "steps": [{key: point.get(key) for key in CAPACITY_FIGURES} for point in report["points"]],
        "skipped": report["skipped"],
    }
    return run, figures


def wait_for(files: list[Path], timeout_s: float, poll_s: float = 5.0) -> None:
    """Until every file exists; the generate and load stages, on the host, need not wait. A job that never
    finishes fails the stage after ``timeout_s`` (TimeoutError, an OSError: recorded), rather than the lease."""
    missing = [f for f in files if not f.exists()]
    if not missing:
        return
    print(f"train waits for {', '.join(map(str, missing))}", flush=True)
    started = time.monotonic()
    while missing := [f for f in files if not f.exists()]:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"train waited {timeout_s:.0f} s for {', '.join(map(str, missing))}; not started")
        time.sleep(poll_s)
    print(f"train waited {time.monotonic() - started:.0f} s", flush=True)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions-per-user", type=float, default=20.1, help="20.1 gives >= 200M at 10M users")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/industrial"))
    parser.add_argument("--device", default="cuda", help="recsys-train --device (cuda, cpu)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1_048_576, help="every step propagates the whole graph")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--eval-users", type=int, default=10_000, help="users validated (and tested) per ranking")
    parser.add_argument("--train-minutes", type=float, default=10.0, help="recsys-train --max-minutes")
    parser.add_argument("--patience", type=int, default=20, help="validations without a gain before stopping")
    parser.add_argument("--train-options", default="", help="more recsys-train options")
    parser.add_argument("--serve-options", default="--requests 2000 --concurrency 16 --ready-timeout 300",
                        help="benchmarks.serve_start options")  # fmt: skip
    parser.add_argument("--capacity-options", default="--connections 16 64 128 256 --post-connections "
                        "--scale-workers --budget-s 300", help="benchmarks.gpu_serving options")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a stage may run")
    parser.add_argument("--train-after", type=Path, nargs="*", default=[],
                        help="files the train stage waits for: what other jobs write once done with the GPU, whose "
                        "memory a 10M training needs to itself")  # fmt: skip
    parser.add_argument("--train-after-timeout", type=float, default=3600,
                        help="seconds the train stage waits for --train-after's files before it fails")  # fmt: skip
    parser.add_argument("--note", default="", help="recorded with each row")
    parser.add_argument("--out", type=Path, default=RESULTS / "industrial_scale.json")
    args = parser.parse_args()
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic-{args.users}x{args.items}-after.csv"  # benchmarks.industrial_data's name for it
    bundles, records = work / "bundles", work / "train.json"
    shape = {"users": args.users, "items": args.items}
    device = "gpu" if args.device.startswith("cuda") else "cpu"  # recsys-index's and recsys-serve's name for it
    rows: list[dict[str, Any]] = []
    interactions: int | None = None

    def row(stage: str, wall: float | None, host: float | None, gpu: float | None, **figures: Any) -> None:
        rows.append({"stage": stage, **shape, "interactions": interactions, "wall_s": wall, "peak_host_gb": host,
                     "peak_gpu_gb": gpu, **figures, "device": args.device, "cores": os.cpu_count(),
                     "note": args.note, "commit": commit()})  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "valid_curve"}), flush=True)
        append_records(args.out, rows[-1:])  # as each stage ends: a run cut short keeps the stages it finished

    def measure(stage: str) -> None:
        nonlocal interactions
        if stage in ("generate", "load"):  # the data benchmark's own fresh-process stages, on the same file
            forwarded = ["--stage", stage, "--users", str(args.users), "--items", str(args.items), "--work-dir",
                         str(work), "--interactions-per-user", str(args.interactions_per_user)]  # fmt: skip
            figures = run_stage(forwarded, None, args.timeout)
            interactions = figures.pop("interactions")
            arrays_gb = interactions * BYTES_PER_INTERACTION / 1e9
            wall, host = figures.pop("wall_s"), figures.pop("peak_host_gb")
            row(stage, wall, host, None, ram_multiple=round(host / arrays_gb, 2), **figures)
        elif stage == "train":
            wait_for(args.train_after, args.train_after_timeout)
            if records.exists():
                records.unlink()
            run = measured(train_command(args, data, bundles, records), work / "train.log", args.timeout)
            figures = train_figures(records, run.log)
            row("train", run.wall_s, run.peak_host_gb, run.peak_gpu_gb, train_options=args.train_options, **figures)
        elif stage == "index":
            command = [sys.executable, "-m", "index.cli", "build", "--bundle-root", str(bundles), "--device", device]
            run = measured(command, work / "index.log", args.timeout)
            row("index", run.wall_s, run.peak_host_gb, run.peak_gpu_gb)
        elif stage == "capacity":
            run, figures = capacity(args, bundles, work)
            row("capacity", run.wall_s, run.peak_host_gb, run.peak_gpu_gb, **figures)
        else:
            command = [sys.executable, "-m", "benchmarks.serve_start", "--bundle-root", str(bundles), "--device",
                       device, "--log", str(work / "serve_server.log"), *args.serve_options.split()]  # fmt: skip
            run = measured(command, work / "serve.log", args.timeout)
            report = [line for line in run.log.read_text().splitlines() if line.startswith("{")][-1]
            row("serve", run.wall_s, run.peak_host_gb, run.peak_gpu_gb, **json.loads(report))

    failed = False
    for stage in args.stages:
        try:
            measure(stage)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as error:
            # Recorded, and the stages that do not need this one's output still run: a service that does not start
            # says nothing about the index build before it or the capacity of the same bundle after it.
            failed = True
            row(stage, None, None, None, error=str(error).splitlines()[0][:2000])
            if stage in ("generate", "load", "train"):
                break
    header = ["stage", "users", "items", "interactions", "wall s", "peak host GB", "peak GPU GB"]
    print(markdown_table(header, [[r["stage"], r["users"], r["items"], r["interactions"], r["wall_s"],
                                   r["peak_host_gb"], r["peak_gpu_gb"]] for r in rows]))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
