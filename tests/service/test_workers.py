"""`recsys-serve --workers 2`: one reload moves every worker, and every scrape sees the whole server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from index.bundle import CURRENT, Bundle, set_current
from tests.conftest import RedisServer, TrainedBundle, free_port
from tests.index.test_bundle import forge
from tests.service.test_cli import serve

KEY = "s3cret"


def metric(text: str, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def children_running(pid: int, module: str) -> list[int]:
    """Processes started by ``pid`` whose command line runs ``module``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and module in command:
            found.append(int(entry.name))
    return found


def wait_for_workers(url: str, count: int, timeout_s: float = 60) -> None:
    """Until ``count`` workers serve (the first to answer /readyz may be alone so far)."""
    deadline = time.monotonic() + timeout_s
    while metric(httpx.get(f"{url}/metrics").text, "recsys_workers") < count:
        assert time.monotonic() < deadline, f"{count} workers did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("search_process", [False, True], ids=["own-indexes", "search-process"])
def test_one_reload_moves_every_worker_and_metrics_cover_all(
    tmp_path: Path, ste_bundle: TrainedBundle, fp_bundle: TrainedBundle, redis_server: RedisServer, search_process: bool
) -> None:
    old, new = Bundle.load(ste_bundle.root), Bundle.load(fp_bundle.root)
    for bundle in (old, new):
        shutil.copytree(bundle.path, tmp_path / bundle.path.name)
    (tmp_path / CURRENT).write_text(old.path.name + "\n")
    process, url = serve(
        tmp_path,
        redis_server,
        "--workers",
        "2",
        env={"RECSYS_ADMIN_API_KEY": KEY, "RECSYS_LOG_LEVEL": "warning", "RECSYS_SEARCH_PROCESS": str(search_process)},
    )
    user = ste_bundle.data.user_ids[0]
    try:
        wait_for_workers(url, 2)
        set_current(tmp_path, new.path.name)  # atomic, as a publisher does: a watcher never reads half a name
        reloaded = httpx.post(f"{url}/admin/reload", headers={"X-API-Key": KEY}, timeout=150)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["model_version"] == new.manifest.model_version and reloaded.json()["workers"] == 2
        # Fresh connections reach either worker: after the acknowledgement, all of them answer from the new model.
        for _ in range(30):
            response = httpx.get(f"{url}/recommend", params={"user_id": user})
            assert response.json()["model_version"] == new.manifest.model_version
            assert response.headers["x-model-version"] == new.manifest.model_version
            assert httpx.get(f"{url}/readyz").json()["model_version"] == new.manifest.model_version
        scrapes = [httpx.get(f"{url}/metrics").text for _ in range(4)]
        for text in scrapes:  # every scrape sums both workers, whichever answered it
            assert metric(text, 'recsys_model_loads_total{outcome="loaded"}') == 2
            assert metric(text, 'recsys_request_seconds_count{route="/recommend",status="200"}') == 30
            for bundle, served in ((new, 1), (old, 0)):
                assert metric(text, f'recsys_model_info{{model_version="{bundle.manifest.model_version}"}}') == served
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr
    for line in stderr.splitlines():  # every line a JSON object, as a log shipper reads them: no library's warning
        assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize("search_process", [False, True], ids=["own-indexes", "search-process"])
def test_a_bundle_that_passes_its_checksums_but_cannot_be_read_splits_no_workers(
    tmp_path: Path, ste_bundle: TrainedBundle, fp_bundle: TrainedBundle, redis_server: RedisServer, search_process: bool
) -> None:
    """Refused everywhere with a 409 (never a 500); every worker's watcher lives on, so once the publisher fixes the
    bundle (in place, its manifest rewritten) one reload moves both workers; at start it is one line and exit 2."""
    old, new = Bundle.load(ste_bundle.root), Bundle.load(fp_bundle.root)
    shutil.copytree(old.path, tmp_path / old.path.name)
    fixed = tmp_path / "next"
    shutil.copytree(new.path, fixed)
    good_seen = (fixed / "seen.npz").read_bytes()
    forge(fixed, "seen.npz", b"PK\x03\x04 not a zip archive")  # passes its (recomputed) checksum
    env = {"RECSYS_ADMIN_API_KEY": KEY, "RECSYS_LOG_LEVEL": "warning", "RECSYS_SEARCH_PROCESS": str(search_process)}

    (tmp_path / CURRENT).write_text("next\n")
    started = subprocess.run(
        [sys.executable, "-m", "service.cli", "--bundle-root", str(tmp_path), "--device", "cpu",
         "--redis-url", redis_server.url, "--port", str(free_port())],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert started.returncode == 2, started.stderr
    assert started.stderr.strip().splitlines()[-1].startswith("recsys-serve: error: ")
    assert "seen.npz" in started.stderr and "Traceback" not in started.stderr, started.stderr

    set_current(tmp_path, old.path.name)
    process, url = serve(tmp_path, redis_server, "--workers", "2", env=env)
    try:
        wait_for_workers(url, 2)
        set_current(tmp_path, "next")
        refused = httpx.post(f"{url}/admin/reload", headers={"X-API-Key": KEY}, timeout=150)
        assert refused.status_code == 409 and "seen.npz" in refused.json()["detail"], refused.text
        time.sleep(2.5)  # every watcher (each second) has met the bad bundle too
        for _ in range(20):  # fresh connections reach either worker
            assert httpx.get(f"{url}/readyz").json()["model_version"] == old.manifest.model_version
        forge(fixed, "seen.npz", good_seen)  # fixed in place
        reloaded = httpx.post(f"{url}/admin/reload", headers={"X-API-Key": KEY}, timeout=150)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["model_version"] == new.manifest.model_version and reloaded.json()["workers"] == 2
        for _ in range(20):
            assert httpx.get(f"{url}/readyz").json()["model_version"] == new.manifest.model_version
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


def test_gauges_forget_workers_killed_with_requests_in_flight(
    ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """Workers SIGKILLed while answering (their searches held up by a stopped search process) are replaced; the
    gauges then count the live workers and their requests only, while the counters keep what the dead ones did."""
    env = {"RECSYS_LOG_LEVEL": "warning", "RECSYS_SEARCH_PROCESS": "1", "RECSYS_SEARCH_TIMEOUT_S": "30"}
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2", env=env)
    user = ste_bundle.data.user_ids[0]
    try:
        wait_for_workers(url, 2)
        for _ in range(4):
            assert httpx.get(f"{url}/recommend", params={"user_id": user}).status_code == 200
        (search,) = children_running(process.pid, "service.search_process")
        workers = children_running(process.pid, "multiprocessing")
        os.kill(search, signal.SIGSTOP)
        request = f"import httpx; httpx.get({url + '/recommend'!r}, params={{'user_id': {user!r}}}, timeout=60)"
        hanging = [subprocess.Popen([sys.executable, "-c", request], stderr=subprocess.DEVNULL) for _ in range(6)]
        time.sleep(1.5)  # every one of them is in flight in some worker
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        os.kill(search, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:  # both replaced
            running = set(children_running(process.pid, "multiprocessing"))
            if len(running) >= 2 and not running & set(workers):
                break
            assert time.monotonic() < deadline, "the workers were not replaced"
            time.sleep(0.1)
        wait_for_workers(url, 2)
        for _ in range(6):  # whichever worker answers the scrape
            text = httpx.get(f"{url}/metrics").text
            assert metric(text, "recsys_workers") == 2, text
            assert metric(text, "recsys_requests_in_flight") == 1  # this scrape
            assert metric(text, 'recsys_request_seconds_count{route="/recommend",status="200"}') >= 4
        for client in hanging:
            client.kill()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        process.communicate()
