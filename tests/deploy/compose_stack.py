"""docker-compose.yml brought up as an operator would, with an override that only names the local images.

Containers are found by compose's labels (project, service, replica number), so that compose v1 and v2, which
name containers differently, both work; every host port is published on 127.0.0.1 only. The HTTP helpers talk to
those ports and return the status with the decoded body, errors included, so that a test can assert on 5xx.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.docker_engine import CommandFailed, Engine, run

ROOT = Path(__file__).resolve().parents[2]
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"


@dataclass(frozen=True)
class Replica:
    container: str
    number: int
    port: int  # on 127.0.0.1


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 (for API_PORTS, one per replica)."""
    for start in range(20000 + os.getpid() % 2000 * 10, 60000, 10):
        try:
            for port in range(start, start + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise CommandFailed(f"no {count} consecutive free ports on 127.0.0.1")


@dataclass
class ComposeStack:
    """One compose project: ``stack("up", "-d")`` runs ``docker compose -p PROJECT -f ... up -d``."""

    engine: Engine
    project: str
    override: Path
    env: dict[str, str]
    workdir: Path

    def argv(self, *args: str) -> list[str]:
        files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(self.override)]
        # An empty env file: a developer's .env in the repository must not change what the test runs.
        empty_env = self.workdir / "empty.env"
        empty_env.touch()
        return [
            *self.engine.compose,
            "--env-file",
            str(empty_env),
            "--project-directory",
            str(ROOT),
            "-p",
            self.project,
            *files,
            *args,
        ]

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "LANG")}
        return {**kept, **self.env, **(extra or {})}

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout, check=check, env=self.environment(env))

    def start(self, *args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A compose command in the background, its output in ``log`` (the load run)."""
        with log.open("ab") as sink:
            return subprocess.Popen(
                self.argv(*args),
                env=self.environment(env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def containers(self, service: str, *, running_only: bool = True) -> list[str]:
        filters = ["--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", f"label={SERVICE_LABEL}={service}"]
        listing = self.engine("ps", "--quiet", "--no-trunc", *([] if running_only else ["--all"]), *filters)
        return listing.stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.engine("inspect", container).stdout)
        return found[0]

    def replicas(self) -> list[Replica]:
        """Running api replicas by number, each with its host port."""
        found = []
        for container in self.containers("api"):
            info = self.inspect(container)
            bindings = info["NetworkSettings"]["Ports"].get("8000/tcp") or []
            assert bindings and bindings[0]["HostIp"] == "127.0.0.1", f"api port not on 127.0.0.1 only: {bindings}"
            number = int(info["Config"]["Labels"][NUMBER_LABEL])
            found.append(Replica(container, number, int(bindings[0]["HostPort"])))
        return sorted(found, key=lambda replica: replica.number)

    def health(self, container: str) -> str:
        state = self.inspect(container)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def wait_healthy(self, containers: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {container[:12]: self.health(container) for container in containers}
            if all(state == "healthy" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout:.0f} s: {states}")
            time.sleep(1)

    def scale_api(self, replicas: int) -> list[Replica]:
        """`up -d --no-deps --scale api=N api`: without --no-deps, `up` would run the one-shot trainer again."""
        self("up", "-d", "--no-build", "--no-deps", "--scale", f"api={replicas}", "api", timeout=300)
        found = self.replicas()
        assert len(found) == replicas, f"{len(found)} api replicas running, asked for {replicas}"
        self.wait_healthy([replica.container for replica in found], timeout=180)
        return found

    def exec(self, service: str, *command: str) -> str:
        return self("exec", "-T", service, *command, timeout=60).stdout

    def logs(self, tail: int = 150) -> str:
        result = self("logs", "--no-color", "--tail", str(tail), timeout=60, check=False)
        return result.stdout + result.stderr

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300)

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of the project still there (by label and by name)."""
        label = f"label={PROJECT_LABEL}={self.project}"
        name = f"name={self.project}_"
        found = []
        for kind, flags in (("container", ["ls", "--all"]), ("network", ["ls"]), ("volume", ["ls"])):
            for selector in (label, name):
                listed = self.engine(kind, *flags, "--quiet", "--filter", selector).stdout.split()
                found += [f"{kind} {item}" for item in listed]
        return sorted(set(found))


@dataclass
class Events:
    """`docker events` of the project, read in the background from the moment it is made (the start order)."""

    engine: Engine
    project: str
    seen: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._process = subprocess.Popen(
            [
                self.engine.docker,
                "events",
                "--format",
                "{{json .}}",
                "--filter",
                f"label={PROJECT_LABEL}={self.project}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            if event.get("Type") != "container":
                continue
            attributes = event["Actor"]["Attributes"]
            self.seen.append((event["timeNano"] / 1e9, attributes.get(SERVICE_LABEL, "?"), event["Action"], attributes))

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self._process.stdout is not None
        self._process.stdout.close()

    def first(self, service: str, action: str, exit_code: str | None = None) -> float:
        for when, name, what, attributes in self.seen:
            if name == service and what == action and (exit_code is None or attributes.get("exitCode") == exit_code):
                return when
        raise AssertionError(f"no {action!r} event of {service} (exit {exit_code}); saw {self.timeline()}")

    def timeline(self) -> str:
        wanted = ("start", "die", "health_status: healthy")
        start = self.seen[0][0] if self.seen else 0.0
        return ", ".join(f"{when - start:.1f}s {name} {what}" for when, name, what, _ in self.seen if what in wanted)


def http(port: int, path: str, body: Any | None = None, timeout: float = 10) -> tuple[int, Any, dict[str, str]]:
    """GET (or POST ``body`` as JSON) 127.0.0.1:port/path: status, decoded JSON (or text) and headers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="GET" if data is None else "POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), dict(error.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


def metric(port: int, name: str, labels: str = "") -> float:
    """One sample of the replica's /metrics (0 when absent), e.g. ``recsys_user_code_lookups_total``."""
    status, text, _ = http(port, "/metrics")
    assert status == 200, f"/metrics on {port}: {status}"
    for line in str(text).splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
