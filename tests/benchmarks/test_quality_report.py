"""benchmarks.quality's report: several grids in one table and plot, each run against another grid's fp reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.quality import report


def record(grid: str, run: str, method: str, dim: int, recall: float, valid: float, size: float) -> dict[str, object]:
    return {"grid": grid, "run": run, "dataset": "gowalla", "method": method, "dim": dim, "bits": 2,
            "bytes_per_node": size, "valid_recall@20": valid, "recall@20": recall, "ndcg@20": recall,
            "recall@50": recall, "train_seconds": 1.0}  # fmt: skip


def test_runs_of_several_grids_against_the_reference_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quality.json"
    out.write_text(json.dumps([
        record("a", "fp", "fp", 64, 0.10, 0.20, 256), record("a", "hq2", "hq", 64, 0.05, 0.10, 16),
        record("b", "hq2_new", "hq", 64, 0.16, 0.30, 16),
        record("ref", "fp_best", "fp", 64, 0.20, 0.40, 256), record("ref", "fp_worse", "fp", 64, 0.25, 0.35, 256),
    ]))  # fmt: skip
    plot = tmp_path / "plot.png"
    report(out, plot, ["a", "b"], reference_grid="ref")
    rows = {line.split(" | ")[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("| gowalla")}
    assert set(rows) == {"fp", "hq2", "hq2_new"}  # the reference grid's runs are the 100 %, not rows
    # Against the fp d = 64 with the best validation score (0.20), not the best test score (0.25).
    assert "| 80.0 % |" in rows["hq2_new"] and "| 25.0 % |" in rows["hq2"]
    assert plot.stat().st_size > 0
    report(out, plot, ["a"])  # without a reference grid: the grids' own fp
    assert "| 50.0 % |" in next(line for line in capsys.readouterr().out.splitlines() if "| hq2 |" in line)
