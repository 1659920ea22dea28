"""benchmarks.industrial_scale: every stage the command a user types, each recorded as it ends; a failed stage is
recorded and the stages that do not need its output still run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.harness import ROOT
from benchmarks.industrial_scale import wait_for

needs_services = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("wrk") is None, reason="needs redis-server and wrk"
)


def pipeline(work: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks.industrial_scale", "--users", "3000", "--items", "3000",
               "--device", "cpu", "--eval-users", "300", "--work-dir", str(work), "--out", str(work / "records.json"),
               *options]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@needs_services
def test_every_stage_runs_and_is_recorded(tmp_path: Path) -> None:
    run = pipeline(
        tmp_path, "--train-minutes", "0.1", "--serve-options", "--requests 40 --concurrency 4",
        "--capacity-options", "--connections 4 --post-connections --scale-workers --workers 1 --seconds 2 "
        "--warmup-s 1 --budget-s 120",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {row["stage"]: row for row in json.loads((tmp_path / "records.json").read_text())}
    assert list(rows) == ["generate", "load", "train", "index", "serve", "capacity"]
    assert all(row["wall_s"] > 0 and row["peak_host_gb"] > 0 and "error" not in row for row in rows.values())
    assert rows["train"]["test_users"] == 300 and rows["train"]["export_seconds"]
    assert rows["serve"]["readiness"]["status"] == "ready" and rows["serve"]["requests"] == 40
    assert rows["serve"]["p50_ms"] <= rows["serve"]["p99_ms"] <= rows["serve"]["p999_ms"]
    (worst,) = rows["serve"]["slowest"]  # 1 % of 40: the slowest request, with its user's seen count
    assert worst["ms"] == rows["serve"]["p999_ms"] and (worst["seen"] is None or worst["seen"] > 0)
    (step,) = rows["capacity"]["steps"]
    assert step["connections"] == 4 and step["rate"] > 0 and step["errors"] == 0
    assert "ready" in (tmp_path / "serve_server.log").read_text()  # the server's own log is kept


@needs_services
def test_a_failed_stage_is_recorded_and_the_stages_after_it_still_run(tmp_path: Path) -> None:
    """No bundle was trained: the index build fails, and so does the service, each recorded with why."""
    run = pipeline(tmp_path, "--stages", "index", "serve", "--serve-options", "--ready-timeout 60")
    assert run.returncode == 1
    rows = json.loads((tmp_path / "records.json").read_text())
    assert [row["stage"] for row in rows] == ["index", "serve"]
    assert all(row["wall_s"] is None and row["error"] for row in rows)
    assert "neither a bundle" in rows[1]["error"]  # the server's own reason, as soon as it exited


def test_the_train_stage_waits_for_the_files_it_is_told_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--train-after: a 10M training must not start while another job still holds the GPU's memory."""
    done = tmp_path / "other_job_done"
    threading.Timer(0.5, done.touch).start()
    started = time.monotonic()
    wait_for([done], timeout_s=60, poll_s=0.05)
    assert done.exists() and time.monotonic() - started >= 0.45
    assert f"train waits for {done}" in capsys.readouterr().out
    wait_for([done], timeout_s=0)  # already there: at once, silently
    assert capsys.readouterr().out == ""
    never = tmp_path / "a_job_that_hangs"
    with pytest.raises(TimeoutError, match="train waited 0 s for .*a_job_that_hangs; not started"):
        wait_for([done, never], timeout_s=0.2, poll_s=0.05)
