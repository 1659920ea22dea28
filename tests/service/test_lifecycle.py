"""Model swaps and Redis outages under live traffic: no 5xx, no mixed versions, bad bundles refused."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from index.bundle import CURRENT, Bundle
from tests.conftest import RedisServer, TrainedBundle, free_port, start_redis
from tests.service.test_api import local_settings, running_service

KEY = "s3cret"


@pytest.fixture
def two_bundles(two_models: tuple[Path, Bundle, Bundle]) -> tuple[Path, str, str]:
    """``two_models`` by model version."""
    root, old, new = two_models
    return root, old.manifest.model_version, new.manifest.model_version


@contextmanager
def traffic(url: str, user_id: str) -> Iterator[list[tuple[int, str | None]]]:
    """Requests in a loop from a thread while the block runs; yields (status, model_version) seen so far."""
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                response = client.get("/recommend", params={"user_id": user_id, "k": 5})
                body = response.json() if response.status_code == 200 else {}
                seen.append((response.status_code, body.get("model_version")))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=30)


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.05)


def reload(url: str, key: str | None = KEY) -> httpx.Response:
    return httpx.post(f"{url}/admin/reload", headers={"X-API-Key": key} if key else {}, timeout=60)


def test_swaps_under_traffic_refuse_bad_bundles_and_never_fail_a_request(
    two_bundles: tuple[Path, str, str], redis_server: RedisServer, ste_bundle: TrainedBundle
) -> None:
    root, old, new = two_bundles
    settings = local_settings(root, redis_server.url, admin_api_key=KEY)
    with running_service(settings) as url, traffic(url, ste_bundle.data.user_ids[1]) as seen:
        assert reload(url, key=None).status_code == 401
        assert reload(url, key="wrong").status_code == 401
        unchanged = reload(url)
        assert unchanged.status_code == 200 and unchanged.json()["changed"] is False
        # A corrupted bundle (truncated codes), a half-written one (CURRENT names a missing folder), CURRENT naming
        # a file, and a CURRENT that is not text: each the bundle's fault (409), none a failure that may pass (503).
        broken = root / "broken-bundle"
        shutil.copytree(root / old, broken)
        codes = broken / "item_codes.npy"
        codes.write_bytes(codes.read_bytes()[: len(codes.read_bytes()) // 2])
        (root / "a-file").write_text("not a bundle")
        for current in (b"broken-bundle\n", b"not-there-yet\n", b"a-file\n", b"\xff\xfe\x00\n"):
            (root / CURRENT).write_bytes(current)
            refused = reload(url)
            assert refused.status_code == 409 and old in refused.json()["detail"]
            assert httpx.get(f"{url}/readyz").json()["model_version"] == old
        (root / CURRENT).write_text(new + "\n")
        swapped = reload(url)
        assert swapped.status_code == 200 and swapped.json() == {
            "previous_version": old, "model_version": new, "changed": True, "workers": 1,
        }  # fmt: skip
        wait_for(lambda: bool(seen) and seen[-1][1] == new)
        metrics = httpx.get(f"{url}/metrics").text
    statuses = {status for status, _ in seen}
    versions = {version for _, version in seen}
    assert statuses == {200}, statuses
    assert versions == {old, new}
    assert 'recsys_model_loads_total{outcome="refused"} 4.0' in metrics
    assert f'recsys_model_info{{model_version="{new}"}} 1.0' in metrics


def test_disabled_admin_endpoint_says_how_to_enable_it(
    two_bundles: tuple[Path, str, str], redis_server: RedisServer
) -> None:
    root, _, _ = two_bundles
    settings = local_settings(root, redis_server.url)
    with running_service(settings) as url:
        response = reload(url)
    assert response.status_code == 403 and "RECSYS_ADMIN_API_KEY" in response.json()["detail"]


def test_watcher_loads_what_current_names(two_bundles: tuple[Path, str, str], redis_server: RedisServer) -> None:
    root, old, new = two_bundles
    settings = local_settings(root, redis_server.url, watch_interval_s=0.1)
    with running_service(settings) as url:
        (root / CURRENT).write_text("not-there-yet\n")  # refused, logged, not retried
        time.sleep(0.5)
        assert httpx.get(f"{url}/readyz").json()["model_version"] == old
        (root / CURRENT).write_text(new + "\n")
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["model_version"] == new)


def test_redis_killed_and_restarted_during_traffic(ste_bundle: TrainedBundle, tmp_path: Path) -> None:
    port = free_port()
    process = start_redis(port)
    settings = local_settings(
        ste_bundle.root,
        f"redis://127.0.0.1:{port}/0",
        user_code_lru_size=0,  # every request goes to Redis
    )
    try:
        with running_service(settings) as url, traffic(url, ste_bundle.data.user_ids[2]) as seen:
            assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
            process.kill()
            process.wait(timeout=10)
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["status"] == "degraded")
            answered_while_down = len(seen)
            time.sleep(0.5)
            assert len(seen) > answered_while_down  # still answering, from the bundle
            process = start_redis(port)
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["status"] == "ready")
            time.sleep(0.3)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert {status for status, _ in seen} == {200}


def test_a_stalled_redis_costs_latency_not_answers(ste_bundle: TrainedBundle) -> None:
    """SIGSTOP: Redis accepts connections but never answers; calls time out and the bundle answers."""
    port = free_port()
    process = start_redis(port)
    settings = local_settings(
        ste_bundle.root, f"redis://127.0.0.1:{port}/0", user_code_lru_size=0, redis_timeout_s=0.05
    )
    try:
        with running_service(settings) as url, traffic(url, ste_bundle.data.user_ids[4]) as seen:
            wait_for(lambda: len(seen) > 5)
            process.send_signal(signal.SIGSTOP)
            stalled_from = len(seen)
            wait_for(lambda: len(seen) > stalled_from + 10)  # answered through the stall
            metrics = httpx.get(f"{url}/metrics").text
            process.send_signal(signal.SIGCONT)
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["status"] == "ready")
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)
    assert {status for status, _ in seen} == {200}
    errors = float(re.search(r"^recsys_redis_errors_total (\S+)$", metrics, re.M).group(1))
    assert errors >= 10  # those answers came from the bundle after a timed-out call each
