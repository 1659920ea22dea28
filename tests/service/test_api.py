"""End to end: a trained bundle, its index built by the CLI, a real uvicorn server and a real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from index.bundle import Bundle
from index.cli import main as index_main
from index.codes import dequantize
from service.app import create_app, package_version
from service.http_limits import BoundedRequestProtocol
from service.settings import ServiceSettings
from service.user_codes import user_code_key
from tests.conftest import RedisServer, TrainedBundle, free_port


def local_settings(bundle_root: Path, redis_url: str, **overrides: Any) -> ServiceSettings:
    """Settings of a test service: this bundle and Redis, a free port, the index on the CPU."""
    return ServiceSettings(bundle_root=bundle_root, redis_url=redis_url, port=free_port(), device="cpu", **overrides)


@contextmanager
def running_service(settings: ServiceSettings) -> Iterator[str]:
    """Serve the app with uvicorn in a thread; yield its base URL once it accepts requests."""
    limits = BoundedRequestProtocol.configured(settings)
    server = uvicorn.Server(  # with the request limits recsys-serve runs
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning", http=limits)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def indexed_bundle(ste_bundle: TrainedBundle) -> TrainedBundle:
    assert index_main(["build", "--bundle-root", str(ste_bundle.root), "--device", "cpu"]) == 0
    assert Bundle.load(ste_bundle.root).index_path is not None
    return ste_bundle


@pytest.fixture(scope="module")
def service(indexed_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[str]:
    with running_service(local_settings(indexed_bundle.root, redis_server.url)) as url:
        yield url


def a_user_with_history(data) -> tuple[str, set[str]]:
    seen = data.seen()
    row = int(np.argmax(np.diff(seen.indptr)))
    items = {data.item_ids[i] for i in seen.indices[seen.indptr[row] : seen.indptr[row + 1]]}
    return data.user_ids[row], items


def test_recommend_returns_unseen_items_from_codes(service: str, indexed_bundle: TrainedBundle) -> None:
    user, history = a_user_with_history(indexed_bundle.data)
    response = httpx.get(f"{service}/recommend", params={"user_id": user, "k": 15})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "codes"
    assert body["model_version"] == indexed_bundle.report.model_version
    items = [item["item_id"] for item in body["items"]]
    assert len(items) == 15 and len(set(items)) == 15
    assert not set(items) & history
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen_false_may_return_history(service: str, indexed_bundle: TrainedBundle) -> None:
    user, history = a_user_with_history(indexed_bundle.data)
    body = httpx.get(f"{service}/recommend", params={"user_id": user, "k": 400, "exclude_seen": "false"}).json()
    assert history <= {item["item_id"] for item in body["items"]}


def test_user_codes_are_cached_in_redis_under_the_model_version(
    service: str, indexed_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    user = indexed_bundle.data.user_ids[3]
    key = user_code_key(indexed_bundle.report.model_version, user)
    redis_server.client().delete(key)
    assert httpx.get(f"{service}/recommend", params={"user_id": user}).status_code == 200
    deadline = time.monotonic() + 5  # the cache is written in the background, after the answer
    while redis_server.client().get(key) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    cached = redis_server.client().get(key)
    bundle = Bundle.load(indexed_bundle.root)
    assert cached == bundle.user_codes[bundle.user_row(user)].tobytes()
    # A second request is served from the cache and answers the same.
    first = httpx.get(f"{service}/recommend", params={"user_id": user}).json()
    second = httpx.get(f"{service}/recommend", params={"user_id": user}).json()
    assert first == second


def test_unknown_user_gets_popular_items(service: str, indexed_bundle: TrainedBundle) -> None:
    body = httpx.get(f"{service}/recommend", params={"user_id": "never-seen", "k": 5}).json()
    assert body["source"] == "popular"
    bundle = Bundle.load(indexed_bundle.root)
    assert [i["item_id"] for i in body["items"]] == [bundle.item_ids[r] for r in bundle.popular[:5]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"k": 5}, "user_id"),
        ({"user_id": "u1", "k": 0}, "k"),
        ({"user_id": "u1", "k": -3}, "k"),
        ({"user_id": "u1", "k": 1001}, "k"),
        ({"user_id": "u1", "k": "many"}, "k"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "control\x01char"}, "user_id"),
        ({"user_id": "u1", "exclude_seen": "perhaps"}, "exclude_seen"),
    ],
)
def test_bad_input_gets_422_naming_the_field(service: str, params: dict[str, object], field: str) -> None:
    response = httpx.get(f"{service}/recommend", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]


def test_health_and_readiness(service: str, indexed_bundle: TrainedBundle) -> None:
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service}/readyz").json()
    assert ready == {
        "status": "ready",
        "model_version": indexed_bundle.report.model_version,
        "redis": True,
        "index_device": "cpu",
        "search_backend": "numpy",  # auto on a CPU, for a small catalogue of 64-bit codes
        "search": True,
    }


def test_a_loaded_model_is_kept_out_of_the_garbage_collectors_full_passes(
    indexed_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """Frozen (``gc.freeze``): full collections no longer walk the model's objects under load."""

    async def serving_objects() -> tuple[object, bool]:
        app = create_app(local_settings(indexed_bundle.root, redis_server.url))
        async with app.router.lifespan_context(app):
            item_ids = app.state.recommender.model.bundle.item_ids
            return item_ids, any(tracked is item_ids for tracked in gc.get_objects())

    gc.unfreeze()
    try:
        item_ids, collected = asyncio.run(serving_objects())
        assert gc.is_tracked(item_ids)
        assert not collected  # tracked, but in the permanent generation that collections skip
    finally:
        gc.unfreeze()


def test_redis_down_degrades_but_still_answers(indexed_bundle: TrainedBundle) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = local_settings(indexed_bundle.root, dead_redis)
    user, history = a_user_with_history(indexed_bundle.data)
    with running_service(settings) as url:
        assert httpx.get(f"{url}/readyz").json()["status"] == "degraded"
        response = httpx.get(f"{url}/recommend", params={"user_id": user, "k": 10})
        assert response.status_code == 200
        assert response.json()["source"] == "codes"
        assert not {item["item_id"] for item in response.json()["items"]} & history


def test_openapi_documents_the_recommend_parameters(service: str) -> None:
    spec = httpx.get(f"{service}/openapi.json").json()
    names = {p["name"] for p in spec["paths"]["/recommend"]["get"]["parameters"]}
    assert names == {"user_id", "k", "exclude_seen"}


def test_the_api_reports_the_packages_version(service: str) -> None:
    """One version: pyproject.toml's, which the app reads from the installed package's metadata."""
    installed = metadata.distribution("binrec")
    assert httpx.get(f"{service}/openapi.json").json()["info"]["version"] == installed.version
    checkout = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["version"]
    source = json.loads(installed.read_text("direct_url.json") or "{}").get("url")
    if source == checkout.as_uri():  # installed from this checkout (a shared environment may hold another's)
        assert installed.version == declared, "the installed metadata is stale: pip install -e . again"


def test_a_source_tree_without_package_metadata_still_has_a_version() -> None:
    """Code run from a checkout on PYTHONPATH, not installed (as on the lent GPU machines), has no metadata to read:
    every worker of several raised there, and uvicorn restarted it forever."""
    assert package_version() == metadata.version("binrec")
    assert package_version("binrec-never-installed") == "unknown"


def test_served_bundle_is_the_one_in_current(indexed_bundle: TrainedBundle) -> None:
    assert Path(indexed_bundle.report.bundle_path).parent == indexed_bundle.root


def test_scaled_codes_are_served_by_exact_rerank(bigear_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    """BiGeaR bundles carry per-layer scales: answers must equal the exact scores of the dequantized codes."""
    settings = local_settings(bigear_bundle.root, redis_server.url)
    user, history = a_user_with_history(bigear_bundle.data)
    bundle = Bundle.load(bigear_bundle.root)
    with running_service(settings) as url:
        body = httpx.get(f"{url}/recommend", params={"user_id": user, "k": 10}).json()
    assert body["source"] == "codes" and not {item["item_id"] for item in body["items"]} & history
    row = bundle.user_row(user)
    mode = bundle.manifest.scale_mode
    user_vector = dequantize(
        bundle.user_codes[row : row + 1], bundle.layout, bundle.dim, bundle.user_scales[row : row + 1], mode
    )
    item_vectors = dequantize(bundle.item_codes, bundle.layout, bundle.dim, bundle.item_scales, mode)
    scores = item_vectors @ user_vector[0]
    for item in body["items"]:
        assert item["score"] == pytest.approx(float(scores[bundle.item_ids.index(item["item_id"])]), rel=1e-5)


def test_asymmetric_codes_are_served_with_the_users_extra_plane(
    asymmetric_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """2-bit user codes (from Redis on the second call) against 1-bit items: exact scores, seen items excluded;
    a new user's history is coded in the users' layout."""
    assert index_main(["build", "--bundle-root", str(asymmetric_bundle.root), "--device", "cpu"]) == 0
    bundle = Bundle.load(asymmetric_bundle.root)
    user, history = a_user_with_history(asymmetric_bundle.data)
    row = bundle.user_row(user)
    users = dequantize(bundle.user_codes[row : row + 1], bundle.user_layout, bundle.dim)
    scores = dequantize(bundle.item_codes, bundle.layout, bundle.dim) @ users[0]
    with running_service(local_settings(asymmetric_bundle.root, redis_server.url)) as url:
        answers = [httpx.get(f"{url}/recommend", params={"user_id": user, "k": 10}).json() for _ in range(2)]
        body = {"user_ids": ["newcomer"], "k": 5, "histories": {"newcomer": sorted(history)[:3]}}
        newcomer = httpx.post(f"{url}/recommend", json=body).json()["results"][0]
    assert answers[0] == answers[1]
    assert answers[0]["source"] == "codes" and not {item["item_id"] for item in answers[0]["items"]} & history
    order = np.lexsort((np.arange(scores.size), -np.where(np.isin(bundle.item_ids, list(history)), -np.inf, scores)))
    assert [item["item_id"] for item in answers[0]["items"]] == [bundle.item_ids[i] for i in order[:10]]
    assert [item["score"] for item in answers[0]["items"]] == [float(scores[i]) for i in order[:10]]
    assert newcomer["source"] == "history" and len(newcomer["items"]) == 5


def test_batch_post_answers_each_user_as_get_does(service: str, indexed_bundle: TrainedBundle) -> None:
    users = [*indexed_bundle.data.user_ids[:5], "never-seen", indexed_bundle.data.user_ids[0]]
    response = httpx.post(f"{service}/recommend", json={"user_ids": users, "k": 7})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == users
    for result in results:
        single = httpx.get(f"{service}/recommend", params={"user_id": result["user_id"], "k": 7}).json()
        assert result == single
    assert results[5]["source"] == "popular" and results[0]["source"] == "codes"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["u1"] * 257}, "user_ids"),
        ({"user_ids": ["u1"], "k": 0}, "k"),
        ({"user_ids": ["u1"], "k": 1001}, "k"),
        ({"user_ids": ["bad\nid"]}, "user_ids"),
        ({"k": 5}, "user_ids"),
        ({"user_ids": ["u1"], "limit": 5}, "limit"),
    ],
)
def test_batch_post_bad_bodies_name_the_field(service: str, body: dict[str, object], field: str) -> None:
    response = httpx.post(f"{service}/recommend", json=body)
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert any(field in error["loc"] for error in response.json()["detail"])


def test_batch_post_that_is_not_json_is_a_422(service: str) -> None:
    response = httpx.post(f"{service}/recommend", content=b"user_ids=u1", headers={"content-type": "text/plain"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "body"


def test_concurrent_requests_share_index_searches(indexed_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    settings = local_settings(indexed_bundle.root, redis_server.url, batch_max_wait_ms=20)
    users = indexed_bundle.data.user_ids[:48]

    async def burst(url: str) -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=url) as client:
            responses = await asyncio.gather(*[client.get("/recommend", params={"user_id": u}) for u in users])
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    with running_service(settings) as url:
        together = asyncio.run(burst(url))
        alone = [httpx.get(f"{url}/recommend", params={"user_id": u}).json() for u in users]
        metrics = httpx.get(f"{url}/metrics").text
    assert together == alone  # batching changes no answer
    count = float(re.search(r"^recsys_search_batch_size_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^recsys_search_batch_size_sum (\S+)$", metrics, re.M).group(1))
    assert total >= 2 * len(users) and count < total  # some searches answered several queries
    for name in ("recsys_request_seconds_bucket", "recsys_user_code_lookups_total", "recsys_model_info"):
        assert name in metrics
    # Every burst request has been answered: only the /metrics request itself is in flight.
    assert float(re.search(r"^recsys_requests_in_flight (\S+)$", metrics, re.M).group(1)) == 1  # type: ignore[union-attr]


def test_responses_carry_a_request_id(service: str) -> None:
    response = httpx.get(f"{service}/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{service}/healthz").headers["x-request-id"]) == 32


def test_schemathesis_finds_no_server_error(service: str) -> None:
    """Property-based requests generated from the OpenAPI spec, every check: no 5xx, every status and body as
    documented, schema-invalid input refused. Except one: that every schema-valid request is accepted. A batch's
    users × k budget (RECSYS_MAX_REQUEST_ITEMS) spans two fields, which JSON Schema cannot state, so a schema-valid
    256 users × k = 400 is rightly a 422."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.fail("schemathesis is not installed: run the README's test command, which installs the dev extra")
    result = subprocess.run(
        [st, "run", f"{service}/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "40", "--seed", "7", "--exclude-path", "/metrics"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]


def test_each_worker_searches_with_the_configured_cpu_threads(
    indexed_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    import faiss

    faiss.omp_set_num_threads(2)  # OpenMP's thread count is per thread: the search thread must set its own
    app = create_app(local_settings(indexed_bundle.root, redis_server.url, search_threads=1))

    async def threads_in_the_search_thread() -> int:
        async with app.router.lifespan_context(app):
            executor = app.state.recommender.batcher._executor
            return int(await asyncio.get_running_loop().run_in_executor(executor, faiss.omp_get_max_threads))

    assert asyncio.run(threads_in_the_search_thread()) == 1
    assert faiss.omp_get_max_threads() == 2  # the caller's own setting is left alone
