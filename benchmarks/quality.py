"""Train every method on every dataset, collect the records, print the table and plot Recall@20 vs size.

    python benchmarks/quality.py --data-dir ../shared/data --datasets gowalla yelp2018 \\
        --methods fp ste bigear hq1 hq2 gnaq --out benchmarks/results/quality.json

Each (dataset, method) is one `recsys-train` run under the same protocol (validation-selected epoch,
learning-rate decay on plateau, refit on train + validation, test once on the served path). The `fp`
runs go first and save their embeddings; every quantized method then starts from its dataset's `fp`
model (`--warm-start-from`; its record's train_seconds include the fp stage), unless `--cold`.
`--parallel N` runs N at once (on one GPU they share it, so their times are not solo times). Records
are appended to `--out`; the table and the PNG are made from the whole file, so they can be refreshed
alone with `--report-only`.
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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHOD_OPTIONS = {
    "fp": "--method fp",
    "ste": "--method ste",
    "bigear": "--method bigear",
    "hq1": "--method hq --bits 1",
    "hq2": "--method hq --bits 2",
    "gnaq": "--method gnaq",
    "hash_fp": "--method fp --input-layer hash",  # issue #6: hashed input layer (its records' method: hash+fp)
    "hash_hq1": "--method hq --bits 1 --input-layer hash",
}
FROM_SCRATCH = {"hash_fp", "hash_hq1"}  # a warm start copies an embedding table, which these do not have
PROTOCOL = "--epochs 1000 --eval-every 5 --patience 6 --lr-decay-patience 3 --batch-size 8192 --lr 5e-3 --refit"


def child_env(parallel: int) -> dict[str, str]:
    """Split the cores between concurrent runs: oversubscribed OpenMP threads spin and crawl."""
    env = os.environ.copy()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def warm_start_file(dataset: str, args: argparse.Namespace) -> Path:
    return Path(args.bundle_root) / f"{dataset}_fp_warm_start.pt"


def run_one(dataset: str, method: str, args: argparse.Namespace) -> tuple[str, int, float]:
    log = args.logs / f"{dataset}_{method}.log"
    warm = warm_start_file(dataset, args)
    if method == "fp":
        start = ["--save-warm-start", str(warm)]
    elif args.cold or method in FROM_SCRATCH:
        start = []
    elif warm.is_file():
        start = ["--warm-start-from", str(warm)]
    else:
        log.write_text(f"no fp model to start from: {warm} (run fp first, or pass --cold)\n")
        return f"{dataset}/{method}", 2, 0.0
    extra = args.extra if method == "fp" else f"{args.extra} {args.quantized_extra}"
    command = [
        sys.executable, "-m", "trainer.cli", "--dataset", dataset, "--data-dir", str(args.data_dir),
        "--bundle-root", str(args.bundle_root / f"{dataset}_{method}"), "--results-json", str(args.out),
        *shlex.split(METHOD_OPTIONS[method]), *shlex.split(args.protocol), *shlex.split(extra), *start,
    ]  # fmt: skip
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(args.parallel)).returncode
    return f"{dataset}/{method}", code, time.perf_counter() - started


def report(out: Path, plot: Path) -> None:
    records = json.loads(out.read_text())
    header = (
        "| dataset | method | bits | bytes/node | R@10 | R@20 | R@50 | N@20 | N@50 | exact R@20 "
        "| train s | peak MB | device |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in records:
        print(
            f"| {r['dataset']} | {r['method']} | {r['bits']} | {r['bytes_per_node']:.0f} | {r['recall@10']:.4f} "
            f"| {r['recall@20']:.4f} | {r['recall@50']:.4f} | {r['ndcg@20']:.4f} | {r['ndcg@50']:.4f} "
            f"| {r.get('exact_recall@20', float('nan')):.4f} | {r['train_seconds']:.0f} | {r['peak_gpu_mb']:.0f} "
            f"| {r['device']} |"
        )
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dataset in sorted({r["dataset"] for r in records}):
        rows = [r for r in records if r["dataset"] == dataset]
        axes.scatter([r["bytes_per_node"] for r in rows], [r["recall@20"] for r in rows], label=dataset)
        for r in rows:
            axes.annotate(
                f"{r['method']}{r['bits'] if r['method'] == 'hq' else ''}", (r["bytes_per_node"], r["recall@20"])
            )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("served bytes per node (codes + scales), log scale")
    axes.set_ylabel("test Recall@20 (served path)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(plot, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["gowalla", "yelp2018"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in METHOD_OPTIONS if m not in FROM_SCRATCH],
        choices=list(METHOD_OPTIONS),
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RECSYS_DATA_DIR", "data")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")
    parser.add_argument("--logs", type=Path, default=Path("var/quality-logs"))
    parser.add_argument("--bundle-root", type=Path, default=Path("var/quality-bundles"))
    parser.add_argument("--protocol", default=PROTOCOL, help="recsys-train options shared by every run")
    parser.add_argument("--extra", default="", help="more recsys-train options, e.g. '--max-minutes 5'")
    parser.add_argument("--quantized-extra", default="", help="more options for the quantized methods only")
    parser.add_argument("--cold", action="store_true", help="quantized methods start from scratch, not from fp")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--report-only", action="store_true", help="only print the table and draw the plot")
    args = parser.parse_args()
    plot = args.plot or args.out.with_name(args.out.stem + "_recall_vs_bytes.png")
    failed = 0
    if not args.report_only:
        args.logs.mkdir(parents=True, exist_ok=True)
        first = [(d, m) for d in args.datasets for m in args.methods if m == "fp"]
        then = [(d, m) for d in args.datasets for m in args.methods if m != "fp"]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for jobs in (first, then):  # quantized runs start from the fp models
                for name, code, seconds in pool.map(lambda job: run_one(job[0], job[1], args), jobs):
                    print(f"{name}: exit {code} in {seconds:.0f} s", flush=True)
                    failed += code != 0
    report(args.out, plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
