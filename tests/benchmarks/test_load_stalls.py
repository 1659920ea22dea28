"""The stall watch behind benchmarks.load_stalls: it must see a C call that holds the GIL, and only that."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from benchmarks.load_stalls import StallWatch, main


def hold_the_gil() -> int:
    return sum(range(30_000_000))  # one C loop: no bytecode runs, so no other thread gets the GIL


def test_a_call_holding_the_gil_is_recorded_with_where_it_was() -> None:
    with StallWatch(threading.get_ident(), threshold_s=0.05) as watch:
        time.sleep(0.05)
        started = time.perf_counter()
        hold_the_gil()
        held = time.perf_counter() - started
    assert len(watch.stalls) == 1
    assert watch.stalls[0]["held_s"] == pytest.approx(held, abs=0.05)
    assert any("hold_the_gil" in frame for frame in watch.stalls[0]["after"])


def test_waiting_that_releases_the_gil_is_not_a_stall() -> None:
    with StallWatch(threading.get_ident(), threshold_s=0.05) as watch:
        time.sleep(0.5)
    assert watch.stalls == []


def test_a_worker_load_on_the_cpu_reports_its_longest_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--random-items", "3000", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["backend"] and record["load_s"] > 0
    assert record["would_be_killed"] is (record["longest_hold_s"] >= 5.0)


def test_a_root_without_a_bundle_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pipeline whose training failed leaves no bundle: its stall check says so, not a traceback."""
    assert main(["--bundle-root", str(tmp_path), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("load_stalls: error: ") and "no CURRENT" in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
