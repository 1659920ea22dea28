"""What benchmarks.serving_stack leaves behind when a server never turns ready: every process's stack."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.serving_stack import ServiceProcess
from benchmarks.wrk_load import py_spy_binary


def test_a_start_that_never_turns_ready_times_out_and_logs_each_process(tmp_path: Path) -> None:
    # A "server" that never answers /readyz, with a child of its own, as uvicorn's supervisor has workers.
    child = "import time; time.sleep(60)"
    script = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    service = ServiceProcess(process, port=1, workers=2)
    log = tmp_path / "serve.log"
    log.write_text("the server's own output\n")
    try:
        time.sleep(0.5)  # its child is started
        with pytest.raises(TimeoutError, match="not ready in time"):
            service._wait_ready(time.monotonic() + 0.5, log)
    finally:
        service.stop()
    text = log.read_text()
    assert text.startswith("the server's own output\n")
    if py_spy_binary() is None:
        assert "no py-spy to show the processes' stacks" in text
    else:
        assert text.count("=== py-spy dump --pid") == 2
