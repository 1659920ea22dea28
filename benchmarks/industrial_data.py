"""Industrial-scale data stages (issue #33): generate an interaction file, then load and split it as a user's file.

    python -m benchmarks.industrial_data --users 1000000 --items 1000000
    python -m benchmarks.industrial_data --users 10000000 --items 10000000 --interactions-per-user 20.1 \\
        --work-dir /scratch/industrial

Each stage runs in a fresh subprocess, so its peak host RAM is that process's own peak resident set
(``wait4``'s ``ru_maxrss``), the imports included; a stage's wall time is measured inside it, from
before its work to after it. ``ram_multiple`` is that peak over the interaction arrays, 16 bytes per
interaction (``int64`` user and item); ``ram_multiple_above_imports`` first subtracts the resident set
of the interpreter with numpy, scipy and ``trainer.data`` imported, which dominates at small scales.

* ``generate``: ``recsys-generate``'s ``write_synthetic`` (power-law users, Zipf items, communities)
  writes ``<work-dir>/synthetic-<users>x<items>.csv``.
* ``load``: ``load_dataset(path)``, exactly what ``recsys-train --dataset PATH`` runs: parse, number
  the ids, de-duplicate, hold out test and validation, build the three CSR matrices.

``--variant before`` measures the code before issue #33 instead: ``--code-root`` is a copy of that
commit's packages (``git archive <commit> trainer index | tar -x -C DIR``), which the stages'
subprocesses import in place of this tree's; there was no file generator then, so ``generate`` is
``make_synthetic`` (geometric users, the in-memory default) written with ``np.savetxt``.
Rows are appended to benchmarks/results/industrial_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, append_records, benchmark_parser, commit, markdown_table, run_measured

BYTES_PER_INTERACTION = 16  # the interaction arrays: int64 user + int64 item


def run_stage(args: list[str], code_root: Path | None, timeout: float) -> dict[str, Any]:
    """Run ``--stage`` in a fresh interpreter: its figures come back on its last stdout line, its peak RSS by wait4."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(code_root)] if code_root is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "benchmarks.industrial_data", *args]
    # ``-m`` puts the working directory first on sys.path: the old packages' folder, when one is given.
    with tempfile.TemporaryFile("w+") as output:  # stderr (logs, progress bars) passes through
        run = run_measured(command, timeout=timeout, cwd=code_root or ROOT, env=env, stdout=output)
        output.seek(0)
        lines = output.readlines()
    if run.returncode != 0:
        code = run.returncode
        raise RuntimeError(f"stage {args[1]} failed with exit code {code} (killed after {timeout} s if negative)")
    figures: dict[str, Any] = json.loads(lines[-1])
    figures["peak_host_gb"] = round(run.peak_rss_bytes / 1e9, 3)
    return figures


def imports_gb() -> float:
    """The stage process's resident set once the data packages are imported: its floor, whatever the scale."""
    import resource

    import numpy  # noqa: F401
    import scipy.sparse  # noqa: F401

    import trainer.data

    print(f"stage imports trainer.data from {Path(trainer.data.__file__).parent}", file=sys.stderr)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def stage_generate(users: int, items: int, per_user: float, out: Path, variant: str) -> dict[str, Any]:
    import resource

    floor = imports_gb()
    started = time.perf_counter()
    if variant == "before":
        import numpy as np

        from trainer.data import SyntheticConfig, make_synthetic

        raw = make_synthetic(SyntheticConfig(n_users=users, n_items=items, mean_items_per_user=per_user))
        np.savetxt(out, np.stack([raw.users, raw.items], axis=1), fmt="%d", delimiter=",", header="user_id,item_id",
                   comments="")  # fmt: skip
        interactions = len(raw)
    else:
        from trainer.data import SyntheticConfig
        from trainer.data.generate import write_synthetic

        config = SyntheticConfig(n_users=users, n_items=items, mean_items_per_user=per_user, activity="power-law",
                                 max_items_per_user=10_000, n_communities=100)  # fmt: skip
        interactions = write_synthetic(config, out).interactions
    wall = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    size = out.stat().st_size
    return {
        "interactions": interactions,
        "imports_gb": floor,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1),
        "file_bytes": size,
        "mb_per_s": round(size / 1e6 / wall, 1),
    }


def stage_load(path: Path) -> dict[str, Any]:
    import resource

    from trainer.data import load_dataset

    floor = imports_gb()
    started = time.perf_counter()
    data = load_dataset(str(path))
    wall = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    interactions = data.train.nnz + data.valid.nnz + data.test.nnz
    return {
        "interactions": interactions,
        "imports_gb": floor,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1),
        "file_bytes": path.stat().st_size,
        "mb_per_s": round(path.stat().st_size / 1e6 / wall, 1),
        "loaded_users": data.n_users,
        "loaded_items": data.n_items,
        "train": data.train.nnz,
        "valid": data.valid.nnz,
        "test": data.test.nnz,
    }


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions-per-user", type=float, default=20.0)
    parser.add_argument("--stages", nargs="+", choices=["generate", "load"], default=["generate", "load"])
    parser.add_argument("--variant", choices=["before", "after"], default="after")
    parser.add_argument("--code-root", type=Path, default=None, help="--variant before: the old commit's packages")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/industrial"), help="where the file is written")
    parser.add_argument("--file", type=Path, default=None,
                        help="load this file, not the generated one (to load one file with both variants)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a stage may run")
    parser.add_argument("--note", default="", help="recorded with each row, e.g. 'shared 2-core box, contended'")
    parser.add_argument("--out", type=Path, default=RESULTS / "industrial_scale.json")
    parser.add_argument("--stage", choices=["generate", "load"], help=argparse.SUPPRESS)  # a stage's own subprocess
    args = parser.parse_args()
    generated = args.work_dir / f"synthetic-{args.users}x{args.items}-{args.variant}.csv"
    if args.stage == "generate":
        print(json.dumps(stage_generate(args.users, args.items, args.interactions_per_user, generated, args.variant)))
        return 0
    if args.stage == "load":
        print(json.dumps(stage_load(args.file or generated)))
        return 0
    if args.variant == "before" and args.code_root is None:
        parser.error("--variant before needs --code-root (a copy of the old commit's packages)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in args.stages:
        forwarded = ["--stage", stage, "--users", str(args.users), "--items", str(args.items),
                     "--interactions-per-user", str(args.interactions_per_user), "--variant", args.variant,
                     "--work-dir", str(args.work_dir), *(["--file", str(args.file)] if args.file else [])]  # fmt: skip
        figures = run_stage(forwarded, args.code_root if args.variant == "before" else None, args.timeout)
        arrays_gb = figures["interactions"] * BYTES_PER_INTERACTION / 1e9
        rows.append({
            "stage": stage, "variant": args.variant, "users": args.users, "items": args.items,
            "interactions": figures.pop("interactions"), "wall_s": figures.pop("wall_s"),
            "peak_host_gb": figures.pop("peak_host_gb"), "peak_gpu_gb": None,
            "interaction_arrays_gb": round(arrays_gb, 3),
            "ram_multiple": None, "file": str(generated if stage == "generate" else args.file or generated), **figures,
            "cores": os.cpu_count(), "note": args.note, "commit": commit(),
        })  # fmt: skip
        peak = rows[-1]["peak_host_gb"]
        rows[-1]["ram_multiple"] = round(peak / arrays_gb, 2) if arrays_gb else None
        rows[-1]["ram_multiple_above_imports"] = (
            round((peak - figures["imports_gb"]) / arrays_gb, 2) if arrays_gb else None
        )
        print(json.dumps(rows[-1]), flush=True)
    append_records(args.out, rows)
    header = ["stage", "variant", "users", "items", "interactions", "wall s", "peak RAM GB", "x arrays",
              "x arrays above imports", "MB/s"]  # fmt: skip
    print(markdown_table(header, [[r["stage"], r["variant"], r["users"], r["items"], r["interactions"], r["wall_s"],
                                   r["peak_host_gb"], r["ram_multiple"], r["ram_multiple_above_imports"], r["mb_per_s"]]
                                  for r in rows]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
