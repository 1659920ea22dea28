"""What every benchmark shares: its argument parser, the commit it measured, its records and its progress bars.

A benchmark is run as a module from the repository root (``python -m benchmarks.retrieval ...``), so
``benchmarks`` and the project's packages import without any path set-up; it appends its rows with ``append_records``
and says which commit it measured with ``commit()``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

from benchmarks.records import append_records

__all__ = [
    "RESULTS",
    "ROOT",
    "append_records",
    "benchmark_parser",
    "commit",
    "markdown_table",
    "progress",
    "run_measured",
    "setup_faiss_gpu_kit",
]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: subprocesses that import the project's packages or ``loadtests`` run from here."""

RESULTS = Path("benchmarks/results")
"""Where the records cited by BENCHMARKS.md live (relative: a benchmark runs from the repository root)."""

T = TypeVar("T")


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` starts with the module docstring, its usage examples kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def commit() -> str:
    """The commit measured: ``RECSYS_COMMIT`` where no ``.git`` travels (the GPU machines), else git's HEAD."""
    if os.environ.get("RECSYS_COMMIT"):
        return os.environ["RECSYS_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """The short table a benchmark ends with, in the Markdown BENCHMARKS.md quotes: one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Finished:
    """A command run to its end by ``run_measured``."""

    returncode: int  # negative: killed by that signal (the timeout kills)
    seconds: float
    peak_rss_bytes: int


# Runs the measured command as its own child and reports that child's peak RSS, as GNU time does. Asked of the
# benchmark's process directly, wait4 would report at least the benchmark's own RSS: a spawned child keeps the
# high-water mark of the memory it was spawned from across exec, and a benchmark may hold gigabytes by then.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measured(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | int | None = None,
) -> Finished:
    """Run ``command`` in a fresh process to its end (killed, with its children, after ``timeout`` seconds): its
    wall time and peak resident set (``wait4``'s: the process's own, or that of the largest child it waited for).
    Output goes to files, not pipes, so nothing blocks on a full pipe."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        launcher = subprocess.Popen([sys.executable, "-c", _MEASURE, report.name, *command], cwd=cwd, env=env,
                                    stdout=stdout, stderr=stderr, start_new_session=True)  # fmt: skip
        timer = threading.Timer(timeout, os.killpg, (launcher.pid, signal.SIGKILL))
        timer.start()
        try:
            launcher.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        reported = report.read().split()
    if not reported:  # the launcher itself was killed: by the timeout
        return Finished(launcher.returncode, seconds, 0)
    return Finished(int(reported[0]), seconds, int(reported[1]) * 1024)  # ru_maxrss is in KiB on Linux


def progress(items: Iterable[T], desc: str, unit: str) -> Iterator[T]:
    """A tqdm bar over ``items`` on a terminal, silent when the output is a log file."""
    yield from tqdm(items, desc=desc, unit=unit, disable=None)


def setup_faiss_gpu_kit(kit: Path) -> None:
    """Load the GPU machines' faiss-gpu kit (tools/device/README.md): must run before FAISS is imported.

    The kit is a site folder unpacked under /tmp, not an installed package, hence the one ``sys.path`` entry;
    its libcublas.so.12 shim forwards to CUDA 13's cuBLAS at the path CUBLAS13_PATH names, found here from
    this process once torch's matrix product has loaded it.
    """
    import torch

    subprocess.run(["mkdir", "-p", "/tmp/site_gpu"], check=True)
    subprocess.run(["tar", "-C", "/tmp/site_gpu", "-xJf", str(kit / "faiss_gpu_sm90_site.tar.xz")], check=True)
    torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")
    with open("/proc/self/maps") as maps:
        os.environ["CUBLAS13_PATH"] = next(line.split()[-1] for line in maps if "libcublas.so.13" in line)
    sys.path[:0] = ["/tmp/site_gpu", str(kit)]
    import gpu_preload  # type: ignore[import-not-found]

    gpu_preload.setup("/tmp/site_gpu")
