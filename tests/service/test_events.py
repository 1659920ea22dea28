"""POST /events end to end: real uvicorn replicas on one real Redis; what a user just did reaches their next
/recommend on every replica, safely under retries, concurrency, a dead Redis and a model swap."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis

from index.bundle import CURRENT, Bundle
from index.item_index import ItemIndex
from service.cold_start import ColdStart
from service.event_store import (
    REVISION_BYTES,
    Event,
    EventStore,
    RecentHistory,
    fresh_code_key,
    history_key,
)
from tests.conftest import RedisServer, TrainedBundle, free_port, start_redis
from tests.service.test_api import local_settings, running_service
from tests.service.test_lifecycle import wait_for

KEY = "ev3nts"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def replicas(ste_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    """Two replicas of one model on one Redis, /events enabled."""
    settings = {"events_api_key": KEY, "events_recent_items": 500, "events_max_batch": 50}
    with (
        running_service(local_settings(ste_bundle.root, redis_server.url, **settings)) as first,
        running_service(local_settings(ste_bundle.root, redis_server.url, **settings)) as second,
    ):
        yield first, second


def post_events(url: str, events: list[dict[str, object]], headers: dict[str, str] = HEADERS) -> httpx.Response:
    return httpx.post(f"{url}/events", json={"events": events}, headers=headers, timeout=30)


def recommend(url: str, user_id: str, k: int = 10, exclude_seen: bool = True) -> dict[str, object]:
    params: dict[str, str | int] = {"user_id": user_id, "k": k, "exclude_seen": str(exclude_seen).lower()}
    response = httpx.get(f"{url}/recommend", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def item_ids(answer: dict[str, object]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]  # type: ignore[attr-defined]


def stored_history(redis_server: RedisServer, user_id: str) -> RecentHistory | None:
    raw = redis_server.client().get(history_key(user_id))
    return RecentHistory.parse(raw) if raw else None


def expected_items(bundle: Bundle, code: np.ndarray, excluded: np.ndarray, k: int = 10) -> list[str]:
    """What the service must answer for this code: the exact search of the bundle's own index."""
    found = ItemIndex.for_bundle(bundle, device="cpu").search(code[None, :], k, exclude=[excluded])
    return [bundle.item_ids[i] for i in found.ids[0] if i >= 0]


def known_user(bundle: Bundle, n: int) -> tuple[str, int]:
    """The n-th user with at least 5 training items (each test takes its own, so Redis state stays apart)."""
    rows = [row for row in range(bundle.manifest.n_users) if bundle.seen_items(row).size >= 5]
    return bundle.user_ids[rows[n]], rows[n]


def new_user() -> str:
    return f"newcomer-{uuid.uuid4().hex[:8]}"


def test_a_new_users_events_code_them_on_every_replica(replicas: tuple[str, str], ste_bundle: TrainedBundle) -> None:
    first, second = replicas
    bundle = Bundle.load(ste_bundle.root)
    assert bundle.cold_start is not None
    user, items = new_user(), [bundle.item_ids[i] for i in (3, 30, 300)]
    assert recommend(second, user)["source"] == "popular"
    response = post_events(first, [{"user_id": user, "item_id": item} for item in items])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3 and body["recoded"] is True and body["model_version"] == bundle.manifest.model_version
    assert [r["status"] for r in body["results"]] == ["accepted"] * 3
    answer = recommend(second, user)  # the other replica
    assert answer["source"] == "events"
    rows = bundle.item_rows(items)
    assert item_ids(answer) == expected_items(bundle, ColdStart(bundle.cold_start).code(rows), rows)
    metrics = httpx.get(f"{first}/metrics").text
    assert re.search(r'^recsys_events_total\{outcome="accepted"\} [1-9]', metrics, re.M)
    assert re.search(r'^recsys_user_code_lookups_total\{source="events"\} [1-9]', recommend_metrics(second), re.M)


def recommend_metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def test_a_known_user_is_recoded_from_trained_and_recent_items_which_are_excluded(
    replicas: tuple[str, str], ste_bundle: TrainedBundle
) -> None:
    first, second = replicas
    bundle = Bundle.load(ste_bundle.root)
    assert bundle.cold_start is not None
    user, row = known_user(bundle, 0)
    before = recommend(second, user)
    assert before["source"] == "codes"
    bought = item_ids(before)[:5]  # what they were shown and then bought: never shown again
    assert post_events(first, [{"user_id": user, "item_id": item} for item in bought]).status_code == 200
    after = recommend(second, user)
    assert after["source"] == "events"
    assert not set(item_ids(after)) & set(bought)
    items = np.union1d(bundle.seen_items(row), bundle.item_rows(bought))
    code = ColdStart(bundle.cold_start).code(items)
    assert item_ids(after) == expected_items(bundle, code, items)
    unfiltered = recommend(second, user, exclude_seen=False)
    assert unfiltered["source"] == "events"
    assert item_ids(unfiltered) == expected_items(bundle, code, np.empty(0, np.int64))


def test_a_code_of_an_older_history_is_never_used(
    replicas: tuple[str, str], ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """A replica records an event and stops before storing its code: the stored code is of the history before it,
    and /recommend codes the history it reads instead of using it."""
    bundle = Bundle.load(ste_bundle.root)
    assert bundle.cold_start is not None
    user, row = known_user(bundle, 3)
    unseen = [bundle.item_ids[i] for i in range(bundle.manifest.n_items) if i not in set(bundle.seen_items(row))]
    assert post_events(replicas[0], [{"user_id": user, "item_id": unseen[0]}]).status_code == 200

    async def record_without_coding() -> None:
        redis = Redis.from_url(redis_server.url)
        try:
            store = EventStore(redis, recent_items=500, ttl_s=60, remembered_ids=10)
            await store.record({user: [Event(unseen[1], time.time())]}, now=time.time())
        finally:
            await redis.aclose()

    asyncio.run(record_without_coding())
    history = stored_history(redis_server, user)
    stale = redis_server.client().get(fresh_code_key(bundle.manifest.model_version, user))
    assert history is not None and stale is not None and stale[:REVISION_BYTES] != history.revision
    answer = recommend(replicas[1], user)
    items = np.union1d(bundle.seen_items(row), bundle.item_rows(unseen[:2]))
    assert answer["source"] == "events"
    assert item_ids(answer) == expected_items(bundle, ColdStart(bundle.cold_start).code(items), items)


def test_recent_items_the_model_does_not_know_leave_the_bundle_code(
    replicas: tuple[str, str], ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """A history of items the serving model does not have (recorded under another model) codes nothing: a known
    user keeps their bundle code rather than one of their trained items alone."""
    bundle = Bundle.load(ste_bundle.root)
    user, _ = known_user(bundle, 4)
    before = recommend(replicas[0], user)

    async def record_items_of_another_model() -> None:
        redis = Redis.from_url(redis_server.url)
        try:
            store = EventStore(redis, recent_items=500, ttl_s=60, remembered_ids=10)
            await store.record({user: [Event("an-item-of-another-model", time.time())]}, now=time.time())
        finally:
            await redis.aclose()

    asyncio.run(record_items_of_another_model())
    assert recommend(replicas[0], user) == before


def test_a_retried_batch_changes_nothing(replicas: tuple[str, str], redis_server: RedisServer) -> None:
    first, second = replicas
    user = new_user()
    batch = [{"user_id": user, "item_id": f"i{n}", "event_id": f"order-{n}", "timestamp": 1_700_000_000 + n}
             for n in range(1, 4)]  # fmt: skip
    assert post_events(first, batch).json()["accepted"] == 3
    history = stored_history(redis_server, user)
    assert history is not None and history.item_ids == ("i3", "i2", "i1")  # most recent first
    retried = post_events(second, batch).json()
    assert retried["accepted"] == 0 and retried["duplicates"] == 3
    assert [r["status"] for r in retried["results"]] == ["duplicate"] * 3
    assert stored_history(redis_server, user) == history  # same items, same revision
    twice = post_events(first, [{"user_id": user, "item_id": "i4", "event_id": "order-4"}] * 2).json()
    assert [r["status"] for r in twice["results"]] == ["accepted", "duplicate"]


def test_unknown_items_are_reported_per_event_and_the_rest_recorded(
    replicas: tuple[str, str], redis_server: RedisServer
) -> None:
    user = new_user()
    events = [{"user_id": user, "item_id": item} for item in ("i5", "no-such-item", "i6")]
    body = post_events(replicas[0], events).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "unknown_item", "accepted"]
    assert (body["accepted"], body["unknown_items"]) == (2, 1)
    history = stored_history(redis_server, user)
    assert history is not None and set(history.item_ids) == {"i5", "i6"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": [{"item_id": "i1"}]}, "user_id"),
        ({"events": [{"user_id": "u1"}]}, "item_id"),
        ({"events": [{"user_id": 1, "item_id": "i1"}]}, "user_id"),
        ({"events": [{"user_id": "u1", "item_id": 7}]}, "item_id"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "timestamp": "1700000000"}]}, "timestamp"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "timestamp": True}]}, "timestamp"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "timestamp": -1}]}, "timestamp"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "timestamp": 1_700_000_000_000}]}, "timestamp"),  # ms
        ({"events": [{"user_id": "u1", "item_id": "i1", "event_id": 5}]}, "event_id"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "event_id": ""}]}, "event_id"),
        ({"events": [{"user_id": "bad\nid", "item_id": "i1"}]}, "user_id"),
        ({"events": [{"user_id": "u1", "item_id": "i1", "rating": 5}]}, "rating"),
        ({"events": []}, "events"),
        ({"events": [{"user_id": "u1", "item_id": "i1"}] * 51}, "events"),
        ({"event": []}, "events"),
    ],
)
def test_bad_input_gets_422_naming_the_field(replicas: tuple[str, str], body: dict[str, object], field: str) -> None:
    response = httpx.post(f"{replicas[0]}/events", json=body, headers=HEADERS)
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert any(field in error["loc"] for error in response.json()["detail"]), response.text


@pytest.mark.parametrize("body", [b'{"events": [{"user_id": "u1", "item_id": "i1", "timestamp": NaN}]}', b"events"])
def test_non_finite_numbers_and_non_json_are_a_422(replicas: tuple[str, str], body: bytes) -> None:
    headers = {**HEADERS, "content-type": "application/json"}
    response = httpx.post(f"{replicas[0]}/events", content=body, headers=headers)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "body"


def test_a_body_over_the_limit_is_a_413(replicas: tuple[str, str]) -> None:
    events = [{"user_id": "u1", "item_id": "i" * 256, "event_id": "e" * 256}] * 50  # within the count limit
    padding = " " * (1 << 20)
    body = ('{"events": ' + str(events).replace("'", '"') + padding + "}").encode()
    headers = {**HEADERS, "content-type": "application/json"}
    response = httpx.post(f"{replicas[0]}/events", content=body, headers=headers)
    assert response.status_code == 413 and response.headers["content-type"] == "application/json"


def test_the_key_is_required_and_an_unset_key_disables_the_endpoint(
    replicas: tuple[str, str], ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    event = [{"user_id": "u1", "item_id": "i1"}]
    assert post_events(replicas[0], event, headers={}).status_code == 401
    assert post_events(replicas[0], event, headers={"X-API-Key": "wrong"}).status_code == 401
    assert post_events(replicas[0], [{"bad": 1}], headers={}).status_code == 401  # checked before the body
    for body in (b'{"events": [', b"\xff\xfe\x00", b"[" * 100_000):  # even before it is decoded
        no_key = httpx.post(f"{replicas[0]}/events", content=body, headers={"content-type": "application/json"})
        assert no_key.status_code == 401 and no_key.headers["content-type"] == "application/json", no_key.text
    # Empty is unset (compose passes an unset variable as empty): else an empty X-API-Key header would get in.
    with running_service(local_settings(ste_bundle.root, redis_server.url, events_api_key="")) as url:
        for headers in ({}, {"X-API-Key": ""}):
            disabled = post_events(url, event, headers=headers)
            assert disabled.status_code == 403 and "RECSYS_EVENTS_API_KEY" in disabled.json()["detail"]


def test_concurrent_posts_for_one_user_from_two_replicas_lose_no_event(
    replicas: tuple[str, str], ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    bundle = Bundle.load(ste_bundle.root)
    user, items = new_user(), bundle.item_ids[:160]

    def post(n: int) -> str:
        """As a client should: a 503 (Redis did not answer in time) is retried with the same event id."""
        event = {"user_id": user, "item_id": items[n], "event_id": f"e{n}"}
        for attempt in range(10):
            response = post_events(replicas[(n + attempt) % 2], [event])
            if response.status_code != 503:
                assert response.status_code == 200, response.text
                status: str = response.json()["results"][0]["status"]
                return status if attempt == 0 else f"{status} on a retry"
        pytest.fail("10 attempts answered 503")

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, range(len(items))))
    assert set(statuses) <= {"accepted", "accepted on a retry", "duplicate on a retry"}
    history = stored_history(redis_server, user)
    assert history is not None and set(history.item_ids) == set(items)
    answer = recommend(replicas[1], user, k=50)
    assert answer["source"] == "events" and not set(item_ids(answer)) & set(items)


def test_a_dead_redis_refuses_events_with_503_while_recommend_answers(ste_bundle: TrainedBundle) -> None:
    port = free_port()
    process = start_redis(port)
    settings = local_settings(ste_bundle.root, f"redis://127.0.0.1:{port}/0", events_api_key=KEY)
    user = ste_bundle.data.user_ids[5]
    event = [{"user_id": user, "item_id": "i7", "event_id": "a"}]
    try:
        with running_service(settings) as url:
            assert post_events(url, event).status_code == 200
            process.kill()
            process.wait(timeout=10)
            refused = post_events(url, event)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "retry" in refused.json()["detail"]
            answer = recommend(url, user)
            assert answer["source"] == "codes"  # from the bundle: the recent events are out of reach
            assert httpx.get(f"{url}/readyz").json()["status"] == "degraded"
            process = start_redis(port)  # back, empty: the recent window is what a Redis loss costs
            wait_for(lambda: post_events(url, event).status_code == 200)
            assert recommend(url, user)["source"] == "events"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_model_swap_keeps_recent_histories_and_recodes_them_on_first_use(
    two_models: tuple[Path, Bundle, Bundle], redis_server: RedisServer
) -> None:
    root, old, new = two_models
    assert new.cold_start is not None
    user, row = known_user(old, 1)
    stranger = new_user()
    bought = [old.item_ids[i] for i in (11, 12, 13) if i not in set(old.seen_items(row).tolist())]
    settings = local_settings(root, redis_server.url, events_api_key=KEY, admin_api_key=KEY)
    client = redis_server.client()
    with running_service(settings) as url:
        events = [{"user_id": who, "item_id": item} for who in (user, stranger) for item in bought]
        assert post_events(url, events).json()["accepted"] == 2 * len(bought)
        assert client.exists(fresh_code_key(old.manifest.model_version, user))
        (root / CURRENT).write_text(new.path.name + "\n")
        reloaded = httpx.post(f"{url}/admin/reload", headers=HEADERS, timeout=60).json()
        assert reloaded["model_version"] == new.manifest.model_version
        new_key = fresh_code_key(new.manifest.model_version, user)
        assert not client.exists(new_key)
        answer = recommend(url, user)
        assert answer["source"] == "events" and answer["model_version"] == new.manifest.model_version
        items = np.union1d(new.seen_items(new.user_row(user)), new.item_rows(bought))  # type: ignore[arg-type]
        code = ColdStart(new.cold_start).code(items)
        assert item_ids(answer) == expected_items(new, code, items)
        wait_for(lambda: bool(client.exists(new_key)))  # stored for the next request, on any replica
        assert client.get(new_key)[REVISION_BYTES:] == code.tobytes()
        assert recommend(url, stranger)["source"] == "events"


def test_a_bundle_without_an_encoder_still_excludes_recent_items(
    bigear_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    bundle = Bundle.load(bigear_bundle.root)
    assert bundle.cold_start is None
    user, _ = known_user(bundle, 2)
    stranger = new_user()
    with running_service(local_settings(bundle.path, redis_server.url, events_api_key=KEY)) as url:
        before = recommend(url, user)
        bought = item_ids(before)[:3]
        popular = item_ids(recommend(url, stranger))[:3]
        events = [{"user_id": who, "item_id": i} for who, items in ((user, bought), (stranger, popular)) for i in items]
        body = post_events(url, events).json()
        assert body["recoded"] is False and body["accepted"] == 6
        after = recommend(url, user)
        assert after["source"] == "codes" and not set(item_ids(after)) & set(bought)
        assert item_ids(after) == [i for i in item_ids(recommend(url, user, k=13)) if i not in bought][:10]
        fallback = recommend(url, stranger)
        assert fallback["source"] == "popular" and not set(item_ids(fallback)) & set(popular)


def test_a_recommend_reads_events_in_the_one_mget_of_user_codes(
    replicas: tuple[str, str], ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    user = ste_bundle.data.user_ids[7]
    client = redis_server.client()

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("mget", "get", "evalsha")}

    recommend(replicas[0], user)  # its code now in the replica's LRU
    before = calls()
    recommend(replicas[0], user)
    after = calls()
    assert after["mget"] - before["mget"] == 1  # the events lookup, though the code came from the LRU
    assert (after["get"], after["evalsha"]) == (before["get"], before["evalsha"])


def test_the_store_caps_the_window_and_never_keeps_a_stale_code(redis_server: RedisServer) -> None:
    """Two replicas racing: A codes revision r1 while B records r2; A's code is dropped, and a code of r1 is never
    read as the code of r2."""

    async def race() -> None:
        redis = Redis.from_url(redis_server.url)
        store = EventStore(redis, recent_items=3, ttl_s=60, remembered_ids=10)
        user = new_user()
        try:
            first = (await store.record({user: [Event("a", 1.0), Event("b", 2.0)]}, now=10.0))[user].history
            second = (await store.record({user: [Event("c", 3.0), Event("d", 4.0)]}, now=11.0))[user].history
            assert first is not None and second is not None and first.revision != second.revision
            assert second.item_ids == ("d", "c", "b")  # capped at the 3 most recent
            assert await store.store_codes("v1", [(user, first.revision, b"old")]) == 0
            assert await redis.get(fresh_code_key("v1", user)) is None
            assert await store.store_codes("v1", [(user, second.revision, b"new")]) == 1
            again = (await store.record({user: [Event("b", 0.5)]}, now=12.0))[user].history
            assert again is not None and again.revision == second.revision  # an older "b" changes nothing
            moved = (await store.record({user: [Event("b", 5.0)]}, now=12.0))[user].history
            assert moved is not None and moved.item_ids == ("b", "d", "c") and moved.revision == second.revision
            newer = (await store.record({user: [Event("e", 6.0)]}, now=13.0))[user].history
            assert newer is not None and newer.revision != second.revision
            stale = await redis.get(fresh_code_key("v1", user))
            assert stale is not None and stale[:REVISION_BYTES] != newer.revision  # readers compare: never used
        finally:
            await redis.aclose()

    asyncio.run(race())


def test_schemathesis_finds_no_server_error_in_events(replicas: tuple[str, str]) -> None:
    """Generated bodies, with the key: every answer a documented status and body, schema-invalid ones refused."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.fail("schemathesis is not installed: run the README's test command, which installs the dev extra")
    result = subprocess.run(
        [st, "run", f"{replicas[0]}/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "60", "--seed", "7", "--include-path", "/events", "-H", f"X-API-Key: {KEY}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
