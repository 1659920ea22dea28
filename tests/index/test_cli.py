"""recsys-index: builds and stores a verified index; refuses broken bundles in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from index.bundle import Bundle
from tests.conftest import TrainedBundle


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "index.cli", *args], capture_output=True, text=True, timeout=120)


def test_build_stores_an_index_that_check_accepts(fp_bundle: TrainedBundle) -> None:
    built = run_cli("build", "--bundle-root", str(fp_bundle.root), "--device", "cpu")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["items"] == fp_bundle.data.n_items
    assert Bundle.load(fp_bundle.root).index_path is not None
    checked = run_cli("check", "--bundle-root", str(fp_bundle.root), "--device", "cpu")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["stored_index"] is True


@pytest.mark.parametrize("command", ["build", "check"])
def test_missing_bundle_is_one_line(tmp_path: Path, command: str) -> None:
    result = run_cli(command, "--bundle-root", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("recsys-index: error:") and result.stderr.count("\n") == 1
