"""User codes under concurrency: requests that look up codes at the same time share Redis round trips, each still
gets its own user's code, and a caller that gives up or a Redis that fails costs the others nothing."""

from __future__ import annotations

import asyncio

import numpy as np
from redis.asyncio import Redis

from index.bundle import Bundle
from service.user_codes import UserCodeCache, user_code_key
from tests.conftest import RedisServer, TrainedBundle, free_port


def mget_calls(redis_server: RedisServer) -> int:
    stats = redis_server.client().info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def test_concurrent_lookups_share_mgets_and_each_gets_its_own_code(
    ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    bundle = Bundle.load(ste_bundle.root)
    version, users = bundle.manifest.model_version, list(range(min(40, bundle.manifest.n_users)))
    stored = {row: np.bitwise_not(np.asarray(bundle.user_codes[row])) for row in users}  # told apart from the bundle's
    client = redis_server.client()
    for row, code in stored.items():
        client.set(user_code_key(version, bundle.user_ids[row]), code.tobytes())

    async def look_up() -> tuple[list[np.ndarray], int]:
        redis = Redis.from_url(redis_server.url)
        cache = UserCodeCache(redis, ttl_s=60, lru_size=0)  # no LRU: every lookup goes to Redis
        try:
            first = asyncio.ensure_future(cache.get(bundle, bundle.user_ids[users[0]], users[0]))
            await asyncio.sleep(0)  # its MGET is out: the others queue behind it
            others = [asyncio.ensure_future(cache.get(bundle, bundle.user_ids[row], row)) for row in users[1:]]
            given_up = asyncio.ensure_future(cache.get(bundle, bundle.user_ids[users[1]], users[1]))
            await asyncio.sleep(0)
            given_up.cancel()  # a client that left: the shared lookup goes on for the others
            codes = await asyncio.gather(first, *others)
            return list(codes), len(cache.gets._waiting)
        finally:
            await redis.aclose()

    before = mget_calls(redis_server)
    codes, left_waiting = asyncio.run(look_up())
    assert mget_calls(redis_server) - before == 2  # one for the first caller, one for everyone who came meanwhile
    assert left_waiting == 0
    for row, code in zip(users, codes, strict=True):
        assert np.array_equal(code, stored[row]), row


def test_a_failing_redis_fails_every_shared_lookup_over_to_the_bundle(ste_bundle: TrainedBundle) -> None:
    bundle = Bundle.load(ste_bundle.root)
    users = list(range(min(10, bundle.manifest.n_users)))
    errors = 0

    def count_error() -> None:
        nonlocal errors
        errors += 1

    async def look_up() -> list[np.ndarray]:
        redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)  # nobody listens
        cache = UserCodeCache(redis, ttl_s=60, lru_size=0, on_error=count_error)
        try:
            return list(await asyncio.gather(*(cache.get(bundle, bundle.user_ids[row], row) for row in users)))
        finally:
            await redis.aclose()

    codes = asyncio.run(look_up())
    for row, code in zip(users, codes, strict=True):
        assert np.array_equal(code, np.asarray(bundle.user_codes[row]))
    assert errors == len(users)  # each request counts its own fall-back
