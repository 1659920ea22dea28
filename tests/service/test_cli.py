"""recsys-serve refuses a broken bundle before binding a port: one line, exit code 2."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, TrainedBundle, free_port


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


def serve(
    root: Path, redis_server: RedisServer, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`recsys-serve` over ``root`` in a process of its own; returns once some worker answers /readyz."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--bundle-root", str(root), "--port", str(port),
         "--redis-url", redis_server.url, "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"recsys-serve did not start: {process.communicate()[1][-2000:]}")
        time.sleep(0.1)


def test_sigterm_finishes_in_flight_requests(ste_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    process, url = serve(ste_bundle.root, redis_server)
    users = ste_bundle.data.user_ids[:40]

    async def read_by_server(client: httpx.AsyncClient) -> tuple[float, float]:
        """(requests in flight besides this one, /recommend answers so far), from the service's own metrics."""
        text = (await client.get("/metrics")).text
        in_flight = float(re.search(r"^recsys_requests_in_flight (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        done = re.search(r'^recsys_request_seconds_count\{route="/recommend",status="200"\} (\S+)$', text, re.M)
        return in_flight - 1, float(done.group(1)) if done else 0.0

    async def burst_then_terminate() -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client, httpx.AsyncClient(base_url=url) as probe:
            requests = [
                asyncio.create_task(client.post("/recommend", json={"user_ids": [u] * 20, "k": 400})) for u in users
            ]
            # SIGTERM only once the server has read every request: one still in the kernel's buffers when the
            # signal lands is refused by uvicorn (the client sees a reset), and was never in flight.
            deadline = time.monotonic() + 30
            while sum(in_flight_and_done := await read_by_server(probe)) < len(users):
                assert time.monotonic() < deadline, in_flight_and_done
                await asyncio.sleep(0.005)
            process.send_signal(signal.SIGTERM)
            return [response.status_code for response in await asyncio.gather(*requests)], in_flight_and_done[0]

    statuses, in_flight_at_signal = asyncio.run(burst_then_terminate())
    assert in_flight_at_signal > 0  # the signal landed while requests were being answered
    assert statuses == [200] * len(users)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM, no traceback.
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    _, stderr = process.communicate()
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert sum(line.get("route") == "/recommend" and "request_id" in line for line in lines) == len(users)


def test_two_workers_serve(ste_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2")
    try:
        user = ste_bundle.data.user_ids[0]
        answers = {httpx.get(f"{url}/recommend", params={"user_id": user}).text for _ in range(10)}
        assert len(answers) == 1  # every worker serves the same model the same way
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        process.communicate()


def test_with_several_workers_the_supervisor_keeps_no_model(
    ste_bundle: TrainedBundle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It verifies the bundle, then drops it: each worker loads its own, and a copy held by the process that only
    supervises them would be a whole bundle's memory for nothing."""
    from service import cli

    given: list[object] = []
    monkeypatch.setattr(cli, "serve", lambda settings, overrides, model, search: given.append(model))
    argv = ["--bundle-root", str(ste_bundle.root), "--redis-url", redis_server.url, "--device", "cpu"]
    assert cli.main([*argv, "--workers", "2"]) == 0 and given == [None]
    assert cli.main([*argv, "--workers", "1"]) == 0 and given[-1] is not None


def test_an_address_the_service_cannot_listen_on_is_one_line(ste_bundle: TrainedBundle) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        for options, words in (
            (["--port", port], "Address already in use"),
            (["--host", "999.1.1.1"], "cannot listen on 999.1.1.1:"),
            (["--host", "10.255.255.1"], "Cannot assign requested address"),
        ):
            result = subprocess.run(
                [sys.executable, "-m", "service.cli", "--bundle-root", str(ste_bundle.root), *options],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
            (line,) = [line for line in result.stderr.splitlines() if line.startswith("recsys-serve: error: ")]
            assert words in line and result.stderr.strip().endswith(line)


APP_REFUSED = "no app today (injected by the test)"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_app_that_cannot_be_built_stops_the_server_in_one_line(
    tmp_path: Path, ste_bundle: TrainedBundle, redis_server: RedisServer, workers: str
) -> None:
    """Whatever keeps the app from being built (here FastAPI itself refuses, in every process that builds one):
    exit 1 with one line naming the cause. A worker of several that raised instead was started again by uvicorn,
    forever: the server never turned ready and never said why (a 10M bundle served from a source tree did this)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import fastapi\n\n"
        "def refuse(self, *args, **kwargs):\n"
        f"    raise RuntimeError({APP_REFUSED!r})\n\n"
        "fastapi.FastAPI.__init__ = refuse\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "RECSYS_LOG_LEVEL": "info"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--bundle-root", str(ste_bundle.root), "--port", str(free_port()),
         "--redis-url", redis_server.url, "--device", "cpu", "--workers", workers],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "died" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys-serve: error: ") and last.endswith(APP_REFUSED), last
    assert ("could not build its app" if workers == "2" else "the app could not be built") in last
