"""Several worker processes of one server serve one model: each says which version it serves, in a shared folder.

`recsys-serve --workers N` runs N uvicorn processes; a request (``POST /admin/reload`` too) reaches one of them.
Every worker follows ``CURRENT`` with its watcher, and writes the version it serves to ``worker-<pid>.json`` in
the folder ``RECSYS_RUNTIME_DIR`` names (made by `recsys-serve` for its workers). So the worker that is asked to
reload can answer only once every live worker serves the new version: after that acknowledgement no answer of
the server comes from the old model.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

RUNTIME_DIR_ENV = "RECSYS_RUNTIME_DIR"
FAILED_PREFIX = "failed-"


def record_start_failure(reason: str) -> None:
    """A worker that cannot start leaves ``reason`` in the server's folder (when it is one of several workers):
    uvicorn's supervisor stops the server when a worker exits with its startup-failure code, but returns normally,
    so `recsys-serve` reads the reason here to exit with it."""
    directory = os.environ.get(RUNTIME_DIR_ENV)
    if directory:
        (Path(directory) / f"{FAILED_PREFIX}{os.getpid()}.txt").write_text(reason)


def start_failures(directory: Path) -> list[str]:
    """The reasons the server's workers gave for not starting, oldest first."""
    found = sorted(directory.glob(f"{FAILED_PREFIX}*.txt"), key=lambda path: path.stat().st_mtime)
    return [path.read_text() for path in found]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class WorkerVersions:
    """The versions the server's live workers serve, one small file per worker."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = os.getpid()

    @classmethod
    def from_environment(cls) -> WorkerVersions | None:
        """The server's folder, when this process is one of several workers; else None."""
        directory = os.environ.get(RUNTIME_DIR_ENV)
        return cls(Path(directory)) if directory else None

    @property
    def own_file(self) -> Path:
        return self.directory / f"worker-{self.pid}.json"

    def publish(self, version: str) -> None:
        """Say (atomically) that this worker now serves ``version``."""
        tmp = self.directory / f".worker-{self.pid}.tmp"
        tmp.write_text(json.dumps({"pid": self.pid, "model_version": version, "since": time.time()}))
        tmp.replace(self.own_file)

    def retire(self) -> None:
        self.own_file.unlink(missing_ok=True)

    def serving(self) -> dict[int, str]:
        """pid → version of every live worker that has said what it serves."""
        found: dict[int, str] = {}
        for path in self.directory.glob("worker-*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):  # replaced or removed while read: the next look sees it whole
                continue
            if process_alive(int(entry["pid"])):
                found[int(entry["pid"])] = str(entry["model_version"])
        return found

    async def wait_for(self, version: str, workers: int, timeout_s: float, poll_s: float = 0.05) -> dict[int, str]:
        """Wait until ``workers`` live workers (a worker still starting has not said yet) all serve ``version``, or
        ``timeout_s`` passes; return what they serve then."""
        deadline = time.monotonic() + timeout_s
        while True:
            serving = self.serving()
            if (len(serving) >= workers and set(serving.values()) == {version}) or time.monotonic() > deadline:
                return serving
            await asyncio.sleep(poll_s)
