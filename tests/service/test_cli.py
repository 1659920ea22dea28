"""recsys-serve refuses a broken bundle before binding a port: one line, exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import TrainedBundle


def test_corrupted_bundle_is_refused(tmp_path: Path, ste_bundle: TrainedBundle) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(ste_bundle.root, root)
    bundle_dir = root / (root / "CURRENT").read_text().strip()
    codes = bundle_dir / "item_codes.npy"
    codes.write_bytes(codes.read_bytes()[:-4] + b"\0\0\0\0")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--bundle-root", str(root), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("recsys-serve: error:") and "item_codes.npy: checksum mismatch" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--port", "70000"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("recsys-serve: error: setting port:")
