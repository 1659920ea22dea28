"""Bring the records of a `tools/device/recipe.sh` call into the quality records, then print the recipe's table.

    python -m benchmarks.recipe_records /work/.device/<call>/recipe.tgz --device-call 1 \\
        --machine "NVIDIA H200 (lent device)" --commit ce888c6

Each `recsys-train --teacher auto` run leaves a record per fp stage (``warm_start``, and a ``teacher`` per candidate
it tried, the one that distilled ``selected``: how long each took, or that it was reused) and the student's. The
students join ``benchmarks/results/quality.json`` under ``--grid`` (default ``recipe``), named by their run, so
``benchmarks.quality --report-only --grid recipe`` draws them; every record, stages included, and each run's wall
time (``walls.txt``: start to exit, stages and export included) go to ``benchmarks/results/recipe.json``. The table
shows each student against the ``fp`` d = 64 run of ``--reference-grid`` with the best validation Recall@20 (the 100
% of the ratios; chosen on validation, never test).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, append_records, benchmark_parser, markdown_table
from benchmarks.quality import grid_records, item_bytes, reference

WALL = re.compile(r"^(?P<dataset>\S+) (?P<run>\S+) exit (?P<code>-?\d+) wall (?P<seconds>\d+) s$")


def read_call(archive: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], tuple[int, int]]]:
    """The records of each ``<dataset>_<run>`` of the call, and each run's exit code and wall seconds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    walls: dict[tuple[str, str], tuple[int, int]] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            name = Path(member.name)
            if name.parent.name == "records" and name.suffix == ".json":
                runs[name.stem] = json.loads(handle.read())
            elif name.name == "walls.txt":
                for line in handle.read().decode().splitlines():
                    if match := WALL.match(line.strip()):
                        key = (match["dataset"], match["run"])
                        walls[key] = (int(match["code"]), int(match["seconds"]))
    return runs, walls


def ingest(archive: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Append the call's records; the students it added."""
    runs, walls = read_call(archive)
    extra = {"device_call": args.device_call, "machine": args.machine, "commit": args.commit, "grid": args.grid}
    students, everything = [], []
    for key, records in sorted(runs.items()):
        dataset = records[-1]["dataset"] if records else key
        run = key.removeprefix(f"{dataset}_")
        code, seconds = walls.get((dataset, run), (None, None))
        for record in records:
            row = record | extra | {"run": run, "recipe_wall_s": seconds, "recipe_exit": code}
            everything.append(row)
            if record.get("stage") == "student":
                students.append(row)
    append_records(args.records, everything)
    append_records(args.out, students)
    return students


def table(out: Path, grid: str, reference_grid: str) -> str:
    """Each student of the grid: its bytes, validation and test Recall@20, its share of fp d = 64, its wall time."""
    students = sorted(grid_records(out, grid), key=lambda r: (r["dataset"], item_bytes(r), r["run"]))
    references = grid_records(out, reference_grid)
    rows = []
    for r in students:
        ref = reference([x for x in references if x["dataset"] == r["dataset"]])
        share = f"{100 * r['recall@20'] / ref['recall@20']:.1f} % of {ref['recall@20']:.4f}" if ref else "-"
        wall = r.get("recipe_wall_s")
        rows.append([
            r["dataset"], r["run"], f"{item_bytes(r):.0f}", f"{r.get('valid_recall@20', float('nan')):.4f}",
            f"{r['recall@20']:.4f}", f"{r['ndcg@20']:.4f}", share,
            f"{wall / 60:.1f}" if wall is not None else "-",
        ])  # fmt: skip
    header = ["dataset", "run", "B/item", "valid R@20", "R@20", "N@20", "of fp d=64", "wall min"]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("archive", type=Path, nargs="?", help="recipe.tgz of a call (omit: only the table)")
    parser.add_argument("--device-call", type=int, default=1)
    parser.add_argument("--machine", default="lent GPU")
    parser.add_argument("--commit", default="unknown", help="the commit the call ran (RECSYS_COMMIT)")
    parser.add_argument("--grid", default="recipe")
    parser.add_argument("--reference-grid", default="fp-lift", help="where the fp d = 64 reference runs are")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    parser.add_argument("--records", type=Path, default=RESULTS / "recipe.json")
    args = parser.parse_args(argv)
    if args.archive is not None:
        if not args.archive.is_file():
            print(f"recipe_records: error: {args.archive}: no such file", file=sys.stderr)
            return 2
        added = ingest(args.archive, args)
        print(f"{len(added)} students added to {args.out} (grid {args.grid!r}); every record in {args.records}")
    print(table(args.out, args.grid, args.reference_grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
