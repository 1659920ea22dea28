"""The real processes a serving benchmark runs: redis-server with user codes loaded, and `recsys-serve`.

Both are started as a deployment would start them (no test doubles): redis-server from PATH, the service through
its own CLI (`python -m service.cli`, what the `recsys-serve` script runs) with ``RECSYS_*`` settings, so
uvicorn's workers, the micro-batcher and the metrics are the production ones. On the lent GPU machines FAISS's GPU
build is a carried kit that must be set up in each process before `import faiss` (../shared/tools/faiss-gpu-device);
a ``sitecustomize`` on the service's PYTHONPATH does that in every worker uvicorn spawns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from benchmarks.harness import ROOT
from benchmarks.wrk_load import ids_at, py_spy_binary
from service.user_codes import user_code_key

MSET_CHUNK = 20_000  # keys per MSET: one round trip each, small enough to keep Redis responsive


def mset_command(prefix: bytes, user_ids: Sequence[str], raw: np.ndarray, width: int) -> bytes:
    """``MSET prefix+id code ...`` in Redis's wire format (RESP): each key and ``width``-byte code as a bulk string."""
    parts = [b"*%d\r\n$4\r\nMSET\r\n" % (2 * len(user_ids) + 1)]
    value_head, values = b"$%d\r\n" % width, raw.tobytes()
    for row, user in enumerate(user_ids):
        key = prefix + user.encode()
        value = values[row * width : (row + 1) * width]
        parts.append(b"$%d\r\n%s\r\n%s%s\r\n" % (len(key), key, value_head, value))
    return b"".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """A private redis-server (no persistence) on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, log: Path) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        port = free_port()
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return cls(process, port)
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        process.kill()
        raise RuntimeError(f"redis-server did not answer on port {port} (its log: {log})")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def load_user_codes(self, version: str, user_ids: Sequence[str], codes: np.ndarray) -> int:
        """Every user's code under the key the service reads (model version + user id): MSETs of ``MSET_CHUNK`` keys
        written as Redis's wire format here and pipelined, 8 in flight, since redis-py's per-argument packing held a
        10M-user fill to minutes. A bundle's ids (``IdMap``) are decoded a chunk at a time."""
        client = redis.Redis(port=self.port)
        codes = np.ascontiguousarray(codes)
        width = codes.shape[1] * codes.dtype.itemsize
        raw = codes.view(np.uint8).reshape(-1)
        prefix = user_code_key(version, "").encode()
        connection = client.connection_pool.get_connection()
        in_flight = 0
        try:
            for start in range(0, len(user_ids), MSET_CHUNK):
                stop = min(start + MSET_CHUNK, len(user_ids))
                ids = ids_at(user_ids, np.arange(start, stop))
                connection.send_packed_command([mset_command(prefix, ids, raw[start * width : stop * width], width)])
                in_flight += 1
                if in_flight == 8:
                    self._confirm(connection, in_flight)
                    in_flight = 0
            self._confirm(connection, in_flight)
        finally:
            client.connection_pool.release(connection)
        return len(user_ids)

    @staticmethod
    def _confirm(connection: Any, in_flight: int) -> None:
        """Read the replies of the ``in_flight`` MSETs sent on ``connection``."""
        for _ in range(in_flight):
            if connection.read_response() not in (b"OK", "OK", True):
                raise RuntimeError("redis-server refused an MSET of user codes")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def faiss_gpu_boot(kit: Path, folder: Path) -> dict[str, str]:
    """Unpack the faiss-gpu kit and write a ``sitecustomize`` that sets it up; the environment that uses it.

    The kit's libcublas.so.12 shim forwards to CUDA 13's cuBLAS at the path CUBLAS13_PATH names, found here once
    from a process that has loaded it (torch's matrix product)."""
    site = Path("/tmp/site_gpu")
    if not (site / "faiss").is_dir():
        site.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(site), "-xJf", str(kit / "faiss_gpu_sm90_site.tar.xz")], check=True)
    probe = (
        "import torch; torch.ones(2, 2, device='cuda') @ torch.ones(2, 2, device='cuda'); "
        "print(next(l.split()[-1] for l in open('/proc/self/maps') if 'libcublas.so.13' in l))"
    )
    cublas = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "# faiss-gpu kit set-up for the serving benchmark (benchmarks/serving_stack.py), before any import of faiss\n"
        "import sys\n"
        "import torch  # noqa: F401  CUDA 13's libraries first, as the kit's README orders\n"
        f"sys.path[:0] = [{str(site)!r}, {str(kit.resolve())!r}]\n"
        "import gpu_preload\n"
        f"gpu_preload.setup({str(site)!r})\n"
    )
    return {"CUBLAS13_PATH": cublas, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


@dataclass
class ServiceProcess:
    """`recsys-serve` (python -m service.cli) with its settings in the environment, on a free port."""

    process: subprocess.Popen[bytes]
    port: int
    workers: int
    readiness: dict[str, Any] = field(default_factory=dict)
    started_s: float = 0.0

    @classmethod
    def start(
        cls, *, name: str, bundle: Path, redis_url: str, device: str, backend: str, workers: int, log: Path,
        settings: dict[str, str], extra_env: dict[str, str], timeout_s: float,
    ) -> ServiceProcess:  # fmt: skip
        """Start it and wait until /readyz says 'ready'; raise with the log's tail if it dies or times out."""
        port = free_port()
        env = {
            **os.environ, **extra_env,
            "RECSYS_BUNDLE_ROOT": str(bundle), "RECSYS_REDIS_URL": redis_url, "RECSYS_PORT": str(port),
            "RECSYS_DEVICE": device, "RECSYS_RETRIEVAL_BACKEND": backend, "RECSYS_WORKERS": str(workers),
            "RECSYS_LOG_LEVEL": "warning", **settings,
        }  # fmt: skip
        started = time.monotonic()
        with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
            handle.write(f"\n=== {name}: {workers} workers, {bundle}\n".encode())
            handle.flush()
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers stop with it (the whole group is signalled)
            )  # fmt: skip
        service = cls(process, port, workers)
        try:
            service.readiness = service._wait_ready(started + timeout_s, log)
        except BaseException:
            service.stop()
            raise
        service.started_s = time.monotonic() - started
        return service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, deadline: float, log: Path) -> dict[str, Any]:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"recsys-serve exited with {self.process.returncode}; its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
                if body.get("status") == "ready":
                    return body
            except OSError:
                pass
            time.sleep(0.25)
        self.dump_stacks(log)
        raise TimeoutError(f"recsys-serve was not ready in time (log: {log}, which ends with each process's stack)")

    def dump_stacks(self, log: Path) -> None:
        """py-spy's stack of the server and of each process it started, appended to ``log``: what a start that
        never turns ready is doing (where py-spy is installed)."""
        binary = py_spy_binary()
        with log.open("a") as out:
            if binary is None:
                out.write("\n=== no py-spy to show the processes' stacks (pip install py-spy)\n")
                return
            for pid in [self.process.pid, *self._children()]:
                try:
                    done = subprocess.run([binary, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                          timeout=30)  # fmt: skip
                    out.write(f"\n=== py-spy dump --pid {pid} ({done.returncode})\n{done.stdout}{done.stderr}")
                except subprocess.TimeoutExpired:
                    out.write(f"\n=== py-spy dump --pid {pid}: no answer in 30 s\n")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            body: bytes = response.read()
            return body

    def worker_pids(self) -> list[int]:
        """The processes answering requests: uvicorn's workers, or the server itself when it has one."""
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in self._children() if b"spawn_main" in read_cmdline(pid)]  # not multiprocessing's tracker

    def search_process_pid(self) -> int | None:
        """The search process (``RECSYS_SEARCH_PROCESS``), if the server runs one."""
        return next((pid for pid in self._children() if b"service.search_process" in read_cmdline(pid)), None)

    def _children(self) -> list[int]:
        children: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            children += [int(pid) for pid in task.read_text().split()]
        return children

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn finishes in-flight requests), SIGKILL after 30 s."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def read_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks a process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


@dataclass
class MpsDaemon:
    """A CUDA MPS control daemon with its own pipe folder: servers given ``environment`` share one GPU context
    through it (their kernels run side by side instead of time-slicing); other processes are not affected."""

    folder: Path

    @classmethod
    def start(cls, folder: Path) -> MpsDaemon:
        binary = shutil.which("nvidia-cuda-mps-control")
        if binary is None:
            raise RuntimeError("nvidia-cuda-mps-control is not on PATH")
        daemon = cls(folder)
        for sub in ("pipe", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        done = subprocess.run([binary, "-d"], env={**os.environ, **daemon.environment}, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nvidia-cuda-mps-control -d failed ({done.returncode}): {done.stderr.strip()}")
        return daemon

    @property
    def environment(self) -> dict[str, str]:
        pipe, log = self.folder / "pipe", self.folder / "log"
        return {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}

    def stop(self) -> None:
        subprocess.run(
            ["nvidia-cuda-mps-control"], input="quit\n", env={**os.environ, **self.environment}, text=True, check=False
        )
