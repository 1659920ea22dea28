"""Train a grid of methods on every dataset, collect the records, print the table and plot Recall@20 vs bytes.

    python -m benchmarks.quality --data-dir ../shared/data --datasets gowalla yelp2018 --parallel 8 \\
        --out benchmarks/results/quality.json

Each (dataset, run) of ``GRID`` is one `recsys-train` run under the same protocol: validation-selected epoch,
learning-rate decay on plateau, refit on train + validation (unless ``--protocol`` drops ``--refit``), test once on
the served path; a run's own options win over ``--protocol``'s, and ``--extra``'s over both. Full-precision
runs go first and save their models; a quantized run then starts from one of them (``start_from``) and may
distil from another (``teacher``): the runs go in waves, each after the runs it needs. ``--parallel N`` runs
N at once (on one GPU they share it, so their times are not solo times). Records gain the run's name and
``--grid`` label and are appended to ``--out``; the table and the PNG are made from that grid's records in
the whole file, so they can be refreshed alone with ``--report-only``, which also takes several grids at once
(``--grid teachers recipe_mixed2``) and another grid's ``fp`` runs as the 100 % (``--reference-grid fp-lift``).

Which run stands for a budget (the Pareto front, the ``fp`` d = 64 reference of every ratio) is chosen by
validation Recall@20, never by test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from benchmarks.harness import RESULTS, append_records, benchmark_parser

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclass(frozen=True)
class Run:
    """One `recsys-train` run of the grid: its options, and which fp runs of the grid it builds on."""

    options: str
    start_from: str | None = None  # an fp run whose saved model this run starts from (same --dim)
    teacher: str | None = None  # an fp run this run distils from (--teacher; any --dim)

    @property
    def needs(self) -> set[str]:
        return {name for name in (self.start_from, self.teacher) if name is not None}


# Distillation from the same-width fp model, which each quantized run also starts from (trainer.distillation). The
# teacher's lists are compared with the first 1,024 negatives of each batch, at weight 3 (best for 2-bit codes);
# 1-bit codes learned more at weight 1 against all 8,192 (``_w1``; BENCHMARKS.md #19).
DISTIL = "--distill-top 20 --distill-weight 3 --softmax-negatives 1024"
DISTIL_W1 = "--distill-top 20 --distill-weight 1"
GRID: dict[str, Run] = {
    "fp": Run("--method fp"),
    "fp128": Run("--method fp --dim 128"),
    # The sampled softmax overfits within 5 epochs at the protocol's learning rate (BENCHMARKS.md #19): slower here.
    "fp_softmax": Run("--method fp --loss softmax --temperature 0.2 --lr 5e-4 --softmax-negatives 1024"),
    "hq1": Run("--method hq --bits 1", start_from="fp"),
    "hq2": Run("--method hq --bits 2", start_from="fp"),
    "hq1_distil": Run(f"--method hq --bits 1 {DISTIL}", start_from="fp", teacher="fp"),
    "hq1_distil_w1": Run(f"--method hq --bits 1 {DISTIL_W1}", start_from="fp", teacher="fp"),
    # 12 bytes per item: the 1-bit code and the item's magnitude (ml-100k, CPU: 0.184 → 0.189 test; not yet on a GPU)
    "hq1_scales_distil_w1": Run(f"--method hq --bits 1 --item-scales {DISTIL_W1}", start_from="fp", teacher="fp"),
    "hq2_distil": Run(f"--method hq --bits 2 {DISTIL}", start_from="fp", teacher="fp"),
    "hq1_d128_distil": Run(f"--method hq --bits 1 --dim 128 {DISTIL}", start_from="fp128", teacher="fp128"),
    "hq2_d128_distil": Run(f"--method hq --bits 2 --dim 128 {DISTIL}", start_from="fp128", teacher="fp128"),
}
PROTOCOL = "--epochs 1000 --eval-every 5 --patience 6 --lr-decay-patience 3 --batch-size 8192 --lr 5e-3 --refit"
# BiGeaR's authors' run logs (d = 256, 2 layers, 1-bit per layer and scales: ~108 bytes per node).
PUBLISHED = {"gowalla": ("BiGeaR", 108.0, 0.1830), "yelp2018": ("BiGeaR", 108.0, 0.0647)}
TARGETS = {"gowalla": 0.183, "yelp2018": 0.0649}  # issue #19: Recall@20 at ≤ 32 bytes per node


def load_grid_file(path: Path) -> None:
    """Add (or replace) runs of ``GRID`` from JSON ``{name: {"options": …, "start_from": …, "teacher": …}}``."""
    for name, fields in json.loads(path.read_text()).items():
        if not name.startswith("_"):  # "_about" and other notes
            GRID[name] = Run(**fields)


def child_env(parallel: int) -> dict[str, str]:
    """Split the cores between concurrent runs: oversubscribed OpenMP threads spin and crawl."""
    env = os.environ.copy()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def saved_model(dataset: str, name: str, args: argparse.Namespace) -> Path:
    return Path(args.bundle_root) / f"{dataset}_{name}.pt"


def waves(names: list[str]) -> list[list[str]]:
    """The runs in an order that respects ``needs``: every wave only needs runs of earlier waves."""
    missing = {need for name in names for need in GRID[name].needs} - set(names)
    if missing:
        raise SystemExit(f"quality.py: the runs need {', '.join(sorted(missing))}: add them to --runs")
    done: set[str] = set()
    ordered: list[list[str]] = []
    while len(done) < len(names):
        ready = [n for n in names if n not in done and GRID[n].needs <= done]
        ordered.append(ready)
        done.update(ready)
    return ordered


def run_one(dataset: str, name: str, args: argparse.Namespace) -> tuple[str, int, float]:
    run = GRID[name]
    log = args.logs / f"{dataset}_{name}.log"
    records = args.logs / f"{dataset}_{name}.json"
    records.unlink(missing_ok=True)
    start: list[str] = []
    if "--method fp" in run.options:
        start += ["--save-warm-start", str(saved_model(dataset, name, args))]
    for flag, source in (("--warm-start-from", run.start_from), ("--teacher", run.teacher)):
        if source is not None:
            path = saved_model(dataset, source, args)
            if not path.is_file():
                log.write_text(f"{name} needs {source}'s model, which is missing: {path}\n")
                return f"{dataset}/{name}", 2, 0.0
            start += [flag, str(path)]
    command = [
        sys.executable, "-m", "trainer.cli", "--dataset", dataset, "--data-dir", str(args.data_dir),
        "--bundle-root", str(args.bundle_root / f"{dataset}_{name}"), "--results-json", str(records),
        *shlex.split(args.protocol), *shlex.split(run.options), *shlex.split(args.extra), *start,
    ]  # fmt: skip
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(args.parallel)).returncode
    if code == 0:
        rows = json.loads(records.read_text())
        append_records(args.out, [row | {"run": name, "grid": args.grid[0]} for row in rows])
    return f"{dataset}/{name}", code, time.perf_counter() - started


def grid_records(out: Path, grid: str) -> list[dict[str, Any]]:
    """The grid's records, the newest of each (dataset, run)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in json.loads(out.read_text()) if out.is_file() else []:
        if record.get("grid") == grid:
            latest[(record["dataset"], record["run"])] = record
    return list(latest.values())


def item_bytes(record: dict[str, Any]) -> float:
    return float(record.get("item_bytes", record["bytes_per_node"]))


def bits(record: dict[str, Any]) -> str:
    """Code bits per dimension: the items', and the users' where asymmetric codes give them more."""
    users = record.get("user_bits")
    return f"{record['bits']} (users {users})" if users and users != record["bits"] else str(record["bits"])


def reference(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fp d = 64 run of a dataset with the best validation Recall@20: the 100 % of every ratio."""
    fp64 = [r for r in records if r["method"] == "fp" and r.get("dim") == 64]
    return max(fp64, key=lambda r: r.get("valid_recall@20", 0.0), default=None)


def pareto(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per byte budget, the run with the best validation Recall@20 among those within it; kept where it gains."""
    front: list[dict[str, Any]] = []
    for budget in sorted({item_bytes(r) for r in records}):
        within = [r for r in records if item_bytes(r) <= budget]
        best = max(within, key=lambda r: r.get("valid_recall@20", 0.0))
        if not front or best is not front[-1]:
            front.append(best)
    return front


def report(out: Path, plot: Path, grids: list[str], reference_grid: str | None = None) -> None:
    """The table and the plot of the grids' runs, each against the fp d = 64 reference of ``reference_grid`` (default:
    of the grids themselves), which is drawn as a line, not as a point."""
    records = [r for grid in grids for r in grid_records(out, grid)]
    records.sort(key=lambda r: (r["dataset"], item_bytes(r), r["run"]))
    references = grid_records(out, reference_grid) if reference_grid is not None else records
    datasets = sorted({r["dataset"] for r in records})
    header = "| dataset | run | bits | dim | bytes/node | valid R@20 | R@20 | N@20 | R@50 | of fp d=64 | train s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in records:
        ref = reference([x for x in references if x["dataset"] == r["dataset"]])
        ratio = f"{100 * r['recall@20'] / ref['recall@20']:.1f} %" if ref else "-"
        print(
            f"| {r['dataset']} | {r['run']} | {bits(r)} | {r.get('dim')} | {item_bytes(r):.0f} "
            f"| {r.get('valid_recall@20', float('nan')):.4f} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} "
            f"| {r['recall@50']:.4f} | {ratio} | {r['train_seconds']:.0f} |"
        )
    if not records:
        return
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        rows = [r for r in records if r["dataset"] == dataset]
        axis.scatter([item_bytes(r) for r in rows], [r["recall@20"] for r in rows], color="tab:blue", s=18)
        for r in rows:
            axis.annotate(
                r["run"], (item_bytes(r), r["recall@20"]), fontsize=7, xytext=(3, 2), textcoords="offset points"
            )
        front = pareto([r for r in rows if r["method"] != "fp"])
        axis.plot([item_bytes(r) for r in front], [r["recall@20"] for r in front], color="tab:blue", label="our front")
        ref = reference([x for x in references if x["dataset"] == dataset])
        if ref is not None:
            axis.axhline(ref["recall@20"], color="gray", linestyle="--", label=f"fp d=64 ({ref['run']})")
        if dataset in PUBLISHED:
            name, size, recall = PUBLISHED[dataset]
            axis.scatter([size], [recall], marker="*", s=120, color="tab:red", label=f"{name} (published)")
        if dataset in TARGETS:
            axis.scatter([32], [TARGETS[dataset]], marker="x", color="tab:green", label="target at 32 B")
        axis.set_xscale("log", base=2)
        axis.set_title(dataset)
        axis.set_xlabel("bytes per item kept by the index (codes + scales), log scale")
        axis.set_ylabel("test Recall@20 (served path)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    print(f"plot: {plot}")


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--datasets", nargs="+", default=["gowalla", "yelp2018"])
    parser.add_argument("--runs", nargs="+", default=None, help="runs of GRID to train (default: all of them)")
    parser.add_argument("--grid-file", type=Path, default=None, help="JSON of more runs (benchmarks/grids/)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RECSYS_DATA_DIR", "data")))
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    parser.add_argument(
        "--grid",
        nargs="+",
        default=["codes"],
        help="label stored in the records (one when training); the report shows these grids' runs",
    )
    parser.add_argument(
        "--reference-grid",
        default=None,
        help="the report's 100 %%: the best fp d = 64 on validation of this grid (default: --grid's)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")
    parser.add_argument("--logs", type=Path, default=Path("var/quality-logs"))
    parser.add_argument("--bundle-root", type=Path, default=Path("var/quality-bundles"))
    parser.add_argument("--protocol", default=PROTOCOL, help="recsys-train options shared by every run")
    parser.add_argument("--extra", default="", help="more recsys-train options, e.g. '--max-minutes 5'")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--report-only", action="store_true", help="only print the table and draw the plot")
    args = parser.parse_args()
    if args.grid_file is not None:
        load_grid_file(args.grid_file)
    args.runs = args.runs or list(GRID)
    if not args.report_only and len(args.grid) != 1:
        parser.error("--grid: one label when training (several only with --report-only)")
    unknown = set(args.runs) - set(GRID)
    if unknown:
        parser.error(f"unknown runs {', '.join(sorted(unknown))}; GRID has {', '.join(GRID)}")
    plot = args.plot or args.out.with_name(args.out.stem + "_recall_vs_bytes.png")
    failed = 0
    if not args.report_only:
        args.logs.mkdir(parents=True, exist_ok=True)
        args.bundle_root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for wave in waves(args.runs):
                jobs = [(dataset, name) for dataset in args.datasets for name in wave]
                for label, code, seconds in pool.map(lambda job: run_one(job[0], job[1], args), jobs):
                    print(f"{label}: exit {code} in {seconds:.0f} s", flush=True)
                    failed += code != 0
    report(args.out, plot, args.grid, args.reference_grid)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
