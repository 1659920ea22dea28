"""One load step against a running service: wrk with benchmarks/gpu_serving.lua, plus what the service says.

wrk (Debian's, a C event loop per thread) is the generator because one core of it sends tens of thousands of
requests a second; locust's Python users cost more CPU per request than the service itself (BENCHMARKS.md #20),
so at 10,000 req/s on the service's own host it would measure itself. wrk is closed-loop: each connection sends
its next request when the last is answered, so a step's rate is what that many connections get through, and a
sweep over connection counts traces rate against latency.

Beside wrk's numbers a step records the service's own view from /metrics (differences over the step): queries per
index search (the micro-batcher's batch size), milliseconds per search, where user codes came from; and the host's
CPU use and, where nvidia-smi exists, the GPU's.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.id_map import IdMap

LUA = Path(__file__).resolve().with_name("gpu_serving.lua")
K = 20  # items per request, as the product pages ask (loadtests/locustfile.py)
BATCH_USERS = 8  # users per batch POST, as in the locustfile
OWN_CODE = re.compile(r"\((service|index)/")  # py-spy frames read "function (path/file.py:line)"
SAFE_ID = re.compile(r"^[A-Za-z0-9._~-]+$")  # needs no escaping in a URL or a JSON string
UNSAFE_LINE = re.compile(r"[^A-Za-z0-9._~\n-]|^$", re.MULTILINE)  # a character SAFE_ID refuses, or an empty id


def ids_at(user_ids: Sequence[str], rows: npt.NDArray[np.int64]) -> list[str]:
    """The ids of ``rows``: a bundle's (``IdMap``) gathered and decoded in one pass, any other sequence id by id."""
    return user_ids.take(rows) if isinstance(user_ids, IdMap) else [user_ids[i] for i in rows]


def write_users_file(user_ids: Sequence[str], path: Path, seed: int = 2024) -> Path:
    """The known users, heaviest first: a fixed-seed shuffle decides who is heavy (as the locustfile does). A
    bundle's ids (``IdMap``) are gathered in one pass and checked with one search, not id by id: 10M of them."""
    order = np.random.default_rng(seed).permutation(len(user_ids))
    ordered = ids_at(user_ids, order)
    text = "\n".join(ordered)
    if ordered and UNSAFE_LINE.search(text):
        unsafe = next(u for u in ordered if not SAFE_ID.match(u))
        raise ValueError(f"user id {unsafe!r} would need escaping in the wrk script; ids must match {SAFE_ID.pattern}")
    path.write_text(text + "\n" if ordered else "")
    return path


def write_synthetic_users(prefix: str, count: int, path: Path, seed: int = 2024) -> Path:
    """Users ``prefix0``..``prefix<count-1>``, heaviest first by a fixed affine permutation the wrk script computes."""
    rng = np.random.default_rng(seed)
    a, b = int(rng.integers(count // 3, count)) if count > 3 else 1, int(rng.integers(0, count))
    while math.gcd(a, count) != 1:
        a += 1
    path.write_text(f"#affine {prefix} {count} {a} {b}\n")
    return path


@dataclass(frozen=True)
class MetricsSnapshot:
    """The counters and histogram sums of one /metrics scrape that a step reads."""

    values: dict[str, float]

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return cls(values)

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def metrics_delta(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """What the service did during a step: searches, queries per search, ms per search, code sources."""
    searches = after.get("recsys_search_batch_size_count") - before.get("recsys_search_batch_size_count")
    queries = after.get("recsys_search_batch_size_sum") - before.get("recsys_search_batch_size_sum")
    search_s = after.get("recsys_search_seconds_sum") - before.get("recsys_search_seconds_sum")
    sources = {
        source: after.get(f'recsys_user_code_lookups_total{{source="{source}"}}')
        - before.get(f'recsys_user_code_lookups_total{{source="{source}"}}')
        for source in ("lru", "redis", "bundle")
    }

    def delta(name: str) -> float:
        return after.get(name) - before.get(name)

    # With a search process: its view of each worker search (queries merged with other workers', its own time).
    owned = delta("recsys_search_process_batch_size_count")
    return {
        "searches": int(searches),
        "batch_mean": round(queries / searches, 2) if searches else None,
        "search_ms_mean": round(1000 * search_s / searches, 3) if searches else None,
        "search_busy": round(search_s, 2),  # index-seconds over the step, summed over workers
        "code_sources": {name: int(count) for name, count in sources.items()},
        "redis_errors": int(delta("recsys_redis_errors_total")),
        "owner_merged_mean": round(delta("recsys_search_process_batch_size_sum") / owned, 2) if owned else None,
        "owner_search_ms_mean": (
            round(1000 * delta("recsys_search_process_search_seconds_sum") / owned, 3) if owned else None
        ),
        "owner_queued_ms_mean": (
            round(1000 * delta("recsys_search_process_queued_seconds_sum") / owned, 3) if owned else None
        ),
    }


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class GpuSampler:
    """nvidia-smi's utilisation and memory, sampled once a second during a step (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.binary = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while self.binary and not self._stop.wait(1.0):
            try:
                out = subprocess.run([self.binary, *query], capture_output=True, text=True, timeout=5).stdout
                util, memory = (float(v) for v in out.splitlines()[0].split(","))
                self.samples.append((util, memory))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        utils, memory = zip(*self.samples, strict=True)
        return {"gpu_util_mean": round(float(np.mean(utils)), 1), "gpu_memory_mib": max(memory)}


def run_wrk(
    url: str,
    users_file: Path,
    *,
    connections: int,
    threads: int,
    seconds: float,
    seed: int = 1,
    mix: str = "mix",
    batch_users: int = BATCH_USERS,
) -> dict[str, Any]:
    """One wrk run; its done() line as a dict, plus req/s and latencies in ms. Raises if wrk fails.

    ``mix``: the locustfile's mix of requests (``mix``, its batch POSTs of ``batch_users``), only GETs of known users
    (``get``) or only batch POSTs (``post``)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    threads = max(1, min(threads, connections))
    command = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(LUA), url, "--", str(users_file), str(K), str(batch_users), str(seed), mix,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:] or done.stdout[-500:]}")
    raw: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
    socket_errors = sum(raw[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "rate": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "requests": raw["requests"],
        "errors": socket_errors + raw["failed_checks"],  # a failed check counts every non-200 too
        **{f"p{p}_ms": raw[f"p{p}_us"] / 1000 for p in ("50", "90", "95", "99", "999")},
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "max_ms": raw["max_us"] / 1000,
        "wrk": {name: raw[name] for name in ("checked", "failed_checks", "connect_errors", "read_errors",
                                               "write_errors", "timeouts", "status_errors", "first_failure")},
        "connections": connections,
        "wrk_threads": threads,
        "seconds": raw["duration_us"] / 1e6,
    }  # fmt: skip


def py_spy_binary() -> str | None:
    """py-spy on PATH, or beside this interpreter (a virtual environment's, not on PATH); None without one."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def profile_worker(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy on one worker for ``seconds`` (sampling without pausing it): where its threads spend their time.

    Returns the share of samples per thread and the functions most often on top of the stack ("self") and
    anywhere in it ("total"); the collapsed stacks stay in ``out``."""
    binary = py_spy_binary()
    if binary is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    command = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200",
               "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.is_file():
        return {"skipped": f"py-spy failed ({done.returncode}): {(done.stderr or done.stdout)[-400:]}"}
    return summarise_stacks(out.read_text(), pid=pid, seconds=seconds)


def summarise_stacks(collapsed: str, *, pid: int, seconds: float, top: int = 15) -> dict[str, Any]:
    """Shares of samples by thread, by innermost function, and by function of ours (service, index)."""
    by_thread: dict[str, int] = {}
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        thread = re.sub(r" \(\d+\)", "", frames[0]) if frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        by_thread[thread] = by_thread.get(thread, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in {f for f in frames if OWN_CODE.search(f)}:  # our code's inclusive time says which step costs
            anywhere[frame] = anywhere.get(frame, 0) + count

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(count / total, 4)) for name, count in ranked] if total else []

    return {"pid": pid, "seconds": seconds, "samples": total, "threads": shares(by_thread),
            "self": shares(own), "total": shares(anywhere)}  # fmt: skip
