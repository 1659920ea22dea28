"""The failures every recsys-* command reports alike: an OSError as one line, SIGTERM as an interrupt."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from index.command_line import Terminated, check_output_directory, check_output_file, os_error, raise_on_sigterm


def test_an_os_error_is_one_line_with_its_paths_and_reason() -> None:
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/a\nb.npy", None, "/data/c")
    line = os_error(error)
    assert "\n" not in line and line.endswith(": No space left on device")
    assert "a\\nb.npy" in line and "/data/c" in line
    assert os_error(OSError("plain")) == "plain"


def test_outputs_are_checked_where_they_would_be_written(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    check_output_directory(tmp_path / "new" / "deeper", "--out")  # creatable: no error, nothing made
    assert not (tmp_path / "new").exists()
    check_output_file(tmp_path / "new" / "r.json", "--out")
    for refused, check in ((a_file, check_output_directory), (a_file / "x", check_output_directory),
                           (tmp_path, check_output_file), (tmp_path / ("n" * 300), check_output_file)):  # fmt: skip
        with pytest.raises(ValueError, match="^--out "):
            check(refused, "--out")


def test_sigterm_is_raised_as_terminated_so_cleanups_run() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    cleaned = False
    try:
        raise_on_sigterm()
        with pytest.raises(Terminated):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0.1)  # the handler runs at the next bytecode
                raise AssertionError("SIGTERM was not raised")
            finally:
                cleaned = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cleaned
