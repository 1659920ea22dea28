"""Per-epoch training time from `recsys-train --log-level debug` logs: steady-state throughput per GPU count.

    torchrun --standalone --nproc-per-node=2 -m trainer.cli --dataset gowalla --epochs 40 --batch-size 8192 \\
        --lr 5e-3 --log-level debug ... > two.log 2>&1          # and the same without torchrun > one.log
    python -m benchmarks.epoch_times --log 1=one.log --log 2=two.log --out benchmarks/results/scaling_epochs.json

Each debug line gives an epoch's stepping seconds on one rank (from the start of its steps to the sync that
ends them, the next epoch's sampling included) and the host seconds to queue that work. The first epoch
(CUDA-graph warm-up and capture, communicator set-up) is reported apart; throughput is the epochs after it.
Logs written before the lines carried `samples` need --samples-per-epoch.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import benchmark_parser, markdown_table


def epoch_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if '"event": "epoch"' in line:
            rows.append(json.loads(line[line.index("{") :]))
    return rows


def summarise(gpus: int, rows: list[dict[str, Any]], samples_per_epoch: int | None) -> dict[str, Any]:
    pairs = [(r["rank"], r["epoch"]) for r in rows]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{gpus} GPU(s): the log holds several training runs (an epoch repeats); give one run a log")
    if not any(r["epoch"] == 0 for r in rows):
        raise ValueError(f"{gpus} GPU(s): no first epoch in the log (a resumed run?)")
    ranks = sorted({r["rank"] for r in rows})
    steady = [r for r in rows if r["epoch"] > 0]
    rank0 = [r for r in steady if r["rank"] == 0]
    if not rank0:
        raise ValueError(f"{gpus} GPU(s): no epoch after the first in the log")
    samples = sum(r.get("samples", samples_per_epoch) or 0 for r in rank0)
    if not samples:
        raise ValueError(f"{gpus} GPU(s): the log's lines carry no samples; pass --samples-per-epoch")
    slowest = sum(max(r["seconds"] for r in steady if r["epoch"] == e) for e in {r["epoch"] for r in rank0})
    return {
        "gpus": gpus,
        "ranks": len(ranks),
        "epochs": len(rank0) + 1,
        "first_epoch_seconds": max(r["seconds"] for r in rows if r["epoch"] == 0),
        "median_epoch_ms": round(1000 * statistics.median(r["seconds"] for r in rank0), 2),
        "median_host_ms": round(1000 * statistics.median(r["host_seconds"] for r in rank0), 2),
        "samples_per_second": round(samples / slowest, 1),
    }


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--log", action="append", required=True, help="GPUS=PATH, once per run")
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--device", default="unknown", help="recorded with the rows")
    parser.add_argument("--commit", default="unknown", help="recorded with the rows")
    parser.add_argument("--out", type=Path, default=None, help="write the rows here (JSON list)")
    args = parser.parse_args()
    rows = []
    for spec in args.log:
        gpus, _, path = spec.partition("=")
        try:
            rows.append(summarise(int(gpus), epoch_lines(Path(path)), args.samples_per_epoch))
        except (OSError, ValueError) as error:
            print(f"epoch_times: error: {spec}: {error}", file=sys.stderr)
            return 2
    base = next((r for r in rows if r["gpus"] == 1), None)
    table = []
    for row in rows:
        row |= {"device": args.device, "commit": args.commit}
        if base:
            row["speed_up"] = round(row["samples_per_second"] / base["samples_per_second"], 3)
        speed_up = f"{row['speed_up']:.2f}×" if "speed_up" in row else "—"
        table.append((row["gpus"], row["epochs"], row["median_epoch_ms"], row["median_host_ms"],
                      f"{row['first_epoch_seconds']:.2f}", f"{row['samples_per_second']:,.0f}", speed_up))  # fmt: skip
    header = (
        "GPUs",
        "epochs",
        "median epoch (ms)",
        "host time to queue it (ms)",
        "first epoch (s)",
        "triples/s",
        "speed-up",
    )
    print(markdown_table(header, table))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
