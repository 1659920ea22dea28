"""A Docker engine for the stack test: the one running, or `dockerd` started here when none answers.

The client is Debian's `/usr/bin/docker` where it exists: its BuildKit handles secrets and cache mounts on its
own, where a newer client first on PATH may lack the buildx plugin it needs for them. Compose is `docker compose`
when the client has it, else `docker-compose`. Every call is bounded in time and fails with its output.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEBIAN_CLIENT = Path("/usr/bin/docker")
START_TIMEOUT_S = 90


class EngineUnavailable(Exception):
    """No engine answers and none can be started here: the reason, for a skip."""


class CommandFailed(AssertionError):
    """A docker or compose command exited non-zero (or ran past its time): the command and its output."""


def run(
    argv: list[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``argv`` with its output captured; past ``timeout`` or (with ``check``) on a non-zero exit, CommandFailed."""
    try:
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        raise CommandFailed(f"{' '.join(argv)}: still running after {timeout:.0f} s\n{output[-3000:]}") from None
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Engine:
    """The docker client and compose command to use."""

    docker: str
    compose: list[str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.docker, *args], timeout=timeout, check=check)

    def image_exists(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False, timeout=30).returncode == 0

    def image_size(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag).stdout)


def docker_client() -> str | None:
    if DEBIAN_CLIENT.exists():
        return str(DEBIAN_CLIENT)
    return shutil.which("docker")


def compose_command(docker: str) -> list[str] | None:
    if run([docker, "compose", "version"], timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def answers(docker: str) -> bool:
    return run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False).returncode == 0


def find_dockerd() -> str | None:
    candidates = [shutil.which("dockerd"), "/usr/sbin/dockerd", "/usr/bin/dockerd"]
    return next((path for path in candidates if path and os.path.exists(path)), None)


def start_daemon(docker: str, log: Path, wait_s: float = START_TIMEOUT_S) -> subprocess.Popen[bytes]:
    """`dockerd` in the background, logging to ``log``; returns once it answers (or raises EngineUnavailable)."""
    dockerd = find_dockerd()
    if dockerd is None:
        raise EngineUnavailable("no Docker engine: dockerd is not installed (scripts/setup.sh installs docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting dockerd needs root")
    with log.open("ab") as sink:
        process = subprocess.Popen([dockerd], stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with {process.returncode}:\n{tail(log)}")
        if answers(docker):
            return process
        time.sleep(1)
    stop_daemon(process)
    raise EngineUnavailable(f"dockerd did not answer within {wait_s:.0f} s:\n{tail(log)}")


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a service manager does: dockerd stops its containers and its containerd before it exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def docker_engine(log: Path, progress: Callable[[str], None]) -> Iterator[Engine]:
    """The engine for the test, started here if none answers (and then stopped again afterwards).

    Raises EngineUnavailable when there is no engine and none can be started: the one reason to skip.
    """
    docker = docker_client()
    if docker is None:
        raise EngineUnavailable("no Docker client: install docker.io (scripts/setup.sh does)")
    started = None
    if not answers(docker):
        progress(f"no Docker engine answers: starting dockerd (log: {log})")
        started = start_daemon(docker, log)
    try:
        compose = compose_command(docker)
        if compose is None:
            raise CommandFailed(
                "neither `docker compose` nor docker-compose is installed (scripts/setup.sh installs it)"
            )
        version = run([docker, "version", "--format", "{{.Server.Version}}"], timeout=30).stdout.strip()
        progress(f"Docker engine {version}; client {docker}; compose: {' '.join(compose)}")
        yield Engine(docker, compose)
    finally:
        if started is not None:
            progress("stopping the dockerd this test started")
            stop_daemon(started)
