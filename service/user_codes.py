"""User codes in Redis, keyed by model version; a miss is filled from the bundle.

Redis is a cache, never the source of truth: every failure (down, slow, evicted) falls back to the
bundle's own row, so a Redis outage degrades latency, not answers.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from index.bundle import Bundle

log = logging.getLogger(__name__)


def user_code_key(model_version: str, user_id: str) -> str:
    return f"recsys:code:{model_version}:{user_id}"


class UserCodeCache:
    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.errors = 0

    async def get(self, bundle: Bundle, user_id: str, row: int) -> npt.NDArray[np.generic]:
        """The user's code row: from Redis when cached, else from the bundle (and cached on the way)."""
        codes = bundle.user_codes
        key = user_code_key(bundle.manifest.model_version, user_id)
        try:
            cached = await self.redis.get(key)
        except (RedisError, OSError, TimeoutError) as error:
            self.errors += 1
            log.warning("redis get failed, answering from the bundle: %s", error)
            return np.asarray(codes[row])
        if isinstance(cached, bytes) and len(cached) == codes.shape[1] * codes.dtype.itemsize:
            self.hits += 1
            return np.frombuffer(cached, dtype=codes.dtype)
        self.misses += 1
        row_codes = np.asarray(codes[row])
        try:
            await self.redis.set(key, row_codes.tobytes(), ex=self.ttl_s)
        except (RedisError, OSError, TimeoutError) as error:
            self.errors += 1
            log.warning("redis set failed: %s", error)
        return row_codes

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False
