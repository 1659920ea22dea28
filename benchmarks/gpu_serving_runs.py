"""Several device calls of benchmarks.gpu_serving as one record: points labelled by run, one plot, one table.

    python -m benchmarks.gpu_serving_runs RUN1.json RUN2.json --label "in flight 1" --label "in flight 4" \\
        --out benchmarks/results/gpu_serving.json

A lent GPU is held for minutes at a time, so one curve is often measured over several calls (a first sweep, then the
same sweep after a change, then a repeat). Each point keeps its own run's commit, device and start time; ``run``
names the run (``--label``, else its commit) in the plot's legend and the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu_serving import plot, table
from benchmarks.harness import benchmark_parser


def merge(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    points = []
    for run, label in zip(runs, labels, strict=True):
        for point in run["points"]:
            points.append({**point, "run": label, "started": run["meta"]["started"]})
    skipped = [f"{label}: {why}" for run, label in zip(runs, labels, strict=True) for why in run["skipped"]]
    profiles = {f"{label}: {name}": profile for run, label in zip(runs, labels, strict=True)
                for name, profile in run.get("profiles", {}).items()}  # fmt: skip
    return {"meta": {"runs": [{**run["meta"], "run": label} for run, label in zip(runs, labels, strict=True)]},
            "points": points, "profiles": profiles, "skipped": skipped}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("runs", type=Path, nargs="+", help="gpu_serving.json files of the runs, in order")
    parser.add_argument("--label", action="append", default=[], help="a name per run (default: its commit)")
    parser.add_argument("--main", default="codes-triton", help="the mode whose worker counts the right plot shows")
    parser.add_argument("--out", type=Path, required=True, help="the merged JSON (and its PNG beside it)")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    if args.label and len(args.label) != len(runs):
        parser.error(f"give one --label per run ({len(runs)}), or none")
    labels = args.label or [f"{run['meta']['commit']} #{i + 1}" for i, run in enumerate(runs)]
    merged = merge(runs, labels)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    plot(merged["points"], args.out.with_suffix(".png"), args.main)
    print(table(merged["points"]).replace("| mode |", "| mode (run) |", 1))
    for why in merged["skipped"]:
        print(f"skipped: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
