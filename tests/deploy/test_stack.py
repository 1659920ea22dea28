"""The compose stack built and run for real: what an operator does to it, checked over 127.0.0.1.

Images come from the repository's Dockerfile (base images made from Debian's packages, no registry reached), the
stack from docker-compose.yml with an override that only names those images. The tests run in file order on one
stack; each first brings it to the shape it needs (two api replicas), so one can also be run alone.
Run them alone with ``pytest -m docker``; without a Docker engine that can start they are skipped.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.compose_stack import ComposeStack, Replica, http, metric
from tests.deploy.conftest import RunningStack
from tests.deploy.docker_engine import Engine
from tests.deploy.docker_images import StackImages, files_containing

pytestmark = pytest.mark.docker

SWAP_ALLOWANCE_S = 10.0
"""Beyond the watch interval, the time a replica may take to validate, index and warm a new bundle."""


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def served_bundle(compose: ComposeStack) -> tuple[dict[str, object], list[str], set[str]]:
    """The manifest, user ids and item ids of the bundle CURRENT names, read inside an api container."""
    current = compose.exec("api", "cat", "/bundles/CURRENT").strip()
    manifest = json.loads(compose.exec("api", "cat", f"/bundles/{current}/manifest.json"))
    users = compose.exec("api", "cat", f"/bundles/{current}/user_ids.txt").split()
    items = set(compose.exec("api", "cat", f"/bundles/{current}/item_ids.txt").split())
    return manifest, users, items


def cached_in_redis(compose: ComposeStack, version: object, user: str) -> bool:
    key = f"recsys:code:{version}:{user}"
    return compose.exec("redis", "redis-cli", "exists", key).strip() == "1"


def container_logs(engine: Engine, container: str) -> str:
    logged = engine("logs", container)
    return logged.stdout + logged.stderr


def readiness(replica: Replica) -> dict[str, object]:
    status, body, _ = http(replica.port, "/readyz")
    assert status == 200 and isinstance(body, dict), f"/readyz of replica {replica.number}: {status} {body}"
    return body


def reports(replica: Replica, status: str) -> Callable[[], bool]:
    return lambda: readiness(replica)["status"] == status


def test_the_images_hold_no_build_secret_and_only_what_they_run(engine: Engine, stack_images: StackImages) -> None:
    for tag in (stack_images.api, stack_images.trainer):
        leaked = files_containing(engine, tag, stack_images.secret_marker)
        assert not leaked, f"the ca_bundle secret was written into a layer of {tag}: {leaked}"
    modules = ("torch", "faiss", "index", "service", "trainer", "locust")
    probe = (
        "import importlib.util as u\n"
        "def found(name):\n"
        "    try:\n"
        "        return u.find_spec(name) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        f"print(' '.join(name for name in {modules!r} if found(name)))"
    )
    expected = {
        stack_images.api: "faiss index service",
        stack_images.api_numpy: "index service",
        stack_images.trainer: "torch faiss index trainer",
        stack_images.load: "locust",
    }
    for tag, modules_present in expected.items():
        found = engine("run", "--rm", "--entrypoint", "python", tag, "-c", probe).stdout.strip()
        assert found == modules_present, f"{tag} holds {found!r}, expected {modules_present!r}"
    scripts = "ls /opt/project/bin 2>/dev/null | tr '\\n' ' '"
    console_scripts = {
        stack_images.api: "recsys-index recsys-serve",
        stack_images.api_numpy: "recsys-index recsys-serve",
        stack_images.trainer: "recsys-generate recsys-index recsys-train",
    }
    for tag, listed in console_scripts.items():
        found = engine("run", "--rm", "--entrypoint", "sh", tag, "-c", scripts).stdout.strip()
        assert found == listed, f"{tag}: console scripts {found!r}"
    assert engine("run", "--rm", "--entrypoint", "id", stack_images.api, "-u").stdout.strip() == "10001"


def test_the_stack_starts_in_dependency_order(stack: RunningStack) -> None:
    events = stack.events
    redis_healthy = events.first("redis", "health_status: healthy")
    trainer_done = events.first("trainer", "die", exit_code="0")
    indexer_started, indexer_done = events.first("indexer", "start"), events.first("indexer", "die", exit_code="0")
    api_started, api_healthy = events.first("api", "start"), events.first("api", "health_status: healthy")
    order = events.timeline()
    assert trainer_done <= indexer_started <= indexer_done, order
    assert max(redis_healthy, indexer_done) <= api_started < api_healthy, order


def test_recommend_answers_from_the_trained_bundle_with_user_codes_cached_in_redis(stack: RunningStack) -> None:
    compose = stack.compose
    manifest, users, items = served_bundle(compose)
    assert manifest["dataset"] == compose.env["TRAIN_DATASET"]
    replica = compose.replicas()[0]
    status, body, headers = http(replica.port, f"/recommend?user_id={users[0]}&k=10")
    assert status == 200, body
    assert body["model_version"] == manifest["model_version"] == headers["x-model-version"]
    assert body["source"] == "codes" and len(body["items"]) == 10
    assert {item["item_id"] for item in body["items"]} <= items
    wait_for(lambda: cached_in_redis(compose, manifest["model_version"], users[0]), 10, "the user's code in Redis")


def test_two_replicas_answer_alike_and_share_user_codes_through_redis(stack: RunningStack) -> None:
    compose = stack.compose
    first, second = compose.scale_api(2)
    manifest, users, _ = served_bundle(compose)
    user = users[1]
    status, body, _ = http(first.port, f"/recommend?user_id={user}&k=10")
    assert status == 200, body
    wait_for(lambda: cached_in_redis(compose, manifest["model_version"], user), 10, "the user's code in Redis")
    from_redis = metric(second.port, "recsys_user_code_lookups_total", '{source="redis"}')
    status, again, _ = http(second.port, f"/recommend?user_id={user}&k=10")
    assert status == 200, again
    assert again["items"] == body["items"]  # one bundle, one answer, whichever replica is asked
    assert metric(second.port, "recsys_user_code_lookups_total", '{source="redis"}') == from_redis + 1


def test_an_api_image_without_faiss_serves_the_stack_bundle_with_numpy(
    engine: Engine, stack: RunningStack, stack_images: StackImages
) -> None:
    """FAISS is one search backend, not the floor under the index: the image built with ``FAISS=`` answers alike."""
    compose = stack.compose
    manifest, users, _ = served_bundle(compose)
    replica = compose.replicas()[0]
    container = f"{compose.project}-api-numpy"
    engine("rm", "-f", container, check=False)
    engine(
        "run", "-d", "--name", container, "--network", f"{compose.project}_default",
        "--volume", f"{compose.project}_bundles:/bundles:ro", "--env", "RECSYS_REDIS_URL=redis://redis:6379/0",
        "--publish", "127.0.0.1::8000", stack_images.api_numpy,
    )  # fmt: skip
    try:
        port = int(engine("port", container, "8000/tcp").stdout.split(":")[-1])

        def answering() -> bool:
            try:
                return http(port, "/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(answering, 90, "the api without FAISS answering /readyz")
        ready = readiness(Replica(container, 0, port))
        assert ready["status"] == "ready" and ready["search_backend"] == "numpy", ready
        for user in users[:5]:
            status, body, _ = http(port, f"/recommend?user_id={user}&k=10")
            assert status == 200, body
            _, expected, _ = http(replica.port, f"/recommend?user_id={user}&k=10")
            assert body["model_version"] == manifest["model_version"]
            assert body["items"] == expected["items"], f"user {user}: numpy and FAISS answer differently"
    finally:
        engine("rm", "-f", container, check=False)


class SwapWatcher:
    """Polls every replica's /readyz and notes when each first serves a version other than ``old``."""

    def __init__(self, replicas: list[Replica], old: object) -> None:
        self.replicas, self.old = replicas, old
        self.swapped: dict[int, tuple[float, object]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set() and len(self.swapped) < len(self.replicas):
            for replica in self.replicas:
                if replica.number not in self.swapped:
                    status, body, _ = http(replica.port, "/readyz")
                    if status == 200 and body["model_version"] != self.old:
                        self.swapped[replica.number] = (time.time(), body["model_version"])
            time.sleep(0.2)

    def wait(self, timeout: float) -> dict[int, tuple[float, object]]:
        self._thread.join(timeout)
        self._stop.set()
        return dict(self.swapped)


def locust_totals(log: Path) -> tuple[int, int]:
    """Requests and failures of locust's summary table ("Aggregated" row)."""
    match = re.search(r"^\s*Aggregated\s+(\d+)\s+(\d+)\(", log.read_text(errors="replace"), re.MULTILINE)
    assert match, f"no locust summary in {log}:\n{log.read_text(errors='replace')[-2000:]}"
    return int(match.group(1)), int(match.group(2))


def test_a_new_model_rolls_to_both_replicas_within_the_watch_interval_under_load(stack: RunningStack) -> None:
    compose = stack.compose
    replicas = compose.scale_api(2)
    old = {readiness(replica)["model_version"] for replica in replicas}
    assert len(old) == 1, old
    # Long enough for a second training run like the first, the watch interval and the swap.
    run_time = max(60, int(3 * stack.trainer_seconds + stack.watch_interval_s + 45))
    log = compose.workdir / "load.log"
    load_env = {"LOAD_USERS": "4", "LOAD_SPAWN_RATE": "4", "LOAD_RUN_TIME": f"{run_time}s"}
    load = compose.start("--profile", "load", "run", "--rm", "-T", "--no-deps", "load", log=log, env=load_env)
    try:
        wait_for(lambda: "All users spawned" in log.read_text(errors="replace"), 120, "locust running")
        load_started = time.time()
        watcher = SwapWatcher(replicas, old.pop())
        compose("run", "--rm", "-T", "trainer", timeout=900)
        compose("run", "--rm", "-T", "--no-deps", "indexer", timeout=300)
        swapped = watcher.wait(timeout=stack.watch_interval_s + 60)
        new_version = compose.exec("api", "cat", "/bundles/CURRENT").strip()
        mtime = "import os; print(os.stat('/bundles/CURRENT').st_mtime)"
        published = float(compose.exec("api", "python", "-c", mtime))
        returncode = load.wait(timeout=run_time + 180)
        load_ended = time.time()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=30)
            for container in compose.containers("load", running_only=False):
                compose.engine("rm", "--force", container, check=False)
    requests, failures = locust_totals(log)
    assert returncode == 0 and failures == 0, f"locust: {failures} of {requests} requests failed (log {log})"
    assert requests > 0
    assert sorted(swapped) == [replica.number for replica in replicas], f"replicas that swapped: {swapped}"
    for number, (when, version) in swapped.items():
        assert version == new_version, f"replica {number} swapped to {version}, CURRENT names {new_version}"
        delay = when - published
        assert delay <= stack.watch_interval_s + SWAP_ALLOWANCE_S, f"replica {number} swapped {delay:.1f} s late"
        assert load_started < when < load_ended, "the swap happened outside the load run"


def test_a_redis_outage_degrades_answers_without_errors_until_redis_is_back(stack: RunningStack) -> None:
    compose = stack.compose
    replicas = compose.scale_api(2)
    (redis,) = compose.containers("redis")
    _, users, _ = served_bundle(compose)
    compose.engine("kill", redis)
    try:
        for replica in replicas:
            wait_for(reports(replica, "degraded"), 15, f"replica {replica.number} degraded")
        errors_before = sum(metric(r.port, "recsys_redis_errors_total") for r in replicas)
        statuses = []
        for replica in replicas:
            for user in users[-40:]:  # the load run's Zipf draw reaches few of these: most are in no replica's memory
                status, body, _ = http(replica.port, f"/recommend?user_id={user}&k=10")
                statuses.append(status)
                assert status != 200 or body["source"] == "codes", body
            status, _, _ = http(replica.port, "/recommend", {"user_ids": users[-48:-40], "k": 10})
            statuses.append(status)
        assert statuses == [200] * len(statuses), f"answers while Redis was down: {sorted(set(statuses))}"
        assert sum(metric(r.port, "recsys_redis_errors_total") for r in replicas) > errors_before
        assert {compose.health(replica.container) for replica in replicas} == {"healthy"}
    finally:
        compose.engine("start", redis)
    for replica in replicas:
        wait_for(reports(replica, "ready"), 60, f"replica {replica.number} ready again")


def test_stopping_a_replica_lets_its_in_flight_request_finish(stack: RunningStack) -> None:
    compose = stack.compose
    survivor, victim = compose.scale_api(2)
    _, users, _ = served_bundle(compose)
    body = json.dumps({"user_ids": users[:2], "k": 5}).encode()
    head = (
        "POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", victim.port), timeout=60) as connection:
        # Half a request: the server has read its headers and waits for the body, so it is in flight when the
        # signal lands, and stays so until the test sends the rest.
        connection.sendall(head.encode() + body[:5])
        time.sleep(1)
        stopping = subprocess.Popen(
            [compose.engine.docker, "stop", "--time", "30", victim.container],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: "Shutting down" in container_logs(compose.engine, victim.container), 20, "SIGTERM in uvicorn"
            )
            assert stopping.poll() is None, "the replica stopped before its in-flight request was answered"
            connection.sendall(body[5:])
            response = b""
            while chunk := connection.recv(65536):
                response += chunk
        finally:
            stopping.wait(timeout=60)
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200"), response[:500]
    answer = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert [result["user_id"] for result in answer["results"]] == users[:2]
    state = compose.inspect(victim.container)["State"]
    assert state["ExitCode"] == 0, f"the replica exited with {state['ExitCode']} (137: killed, not stopped)"
    status, _, _ = http(survivor.port, f"/recommend?user_id={users[0]}&k=5")
    assert status == 200


def test_down_leaves_nothing_behind(stack: RunningStack) -> None:
    stack.compose.down()
    assert stack.compose.leftovers() == []
