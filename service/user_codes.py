"""User codes: a small in-process LRU, then Redis (keyed by model version), then the bundle itself.

For user codes Redis is a cache, never the source of truth: every failure (down, slow, evicted) falls back to the
bundle's own row, so a Redis outage degrades latency, not answers. What else a request reads from Redis (its users'
recent events, ``service.activity``) rides in the same MGET (``lookup``). A batch of users costs one MGET and
one pipelined write of the misses, and concurrent requests share MGETs: while one is out, the keys wanted
meanwhile wait and go out together in the next, so under load a worker pays one round trip for many requests.
redis-py drops a connection whose call was cancelled or timed out (``socket_timeout``) and reconnects on the
next call, so the cache recovers by itself when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from index.bundle import Bundle

log = logging.getLogger(__name__)

REDIS_FAILURES = (RedisError, OSError, TimeoutError)
Code = npt.NDArray[np.generic]


def user_code_key(model_version: str, user_id: str) -> str:
    return f"recsys:code:{model_version}:{user_id}"


class LRU:
    """Least-recently-used map of (model version, user id) → code; used from the event loop only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Code] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Code | None:
        code = self._items.get(key)
        if code is not None:
            self._items.move_to_end(key)
        return code

    def put(self, key: tuple[str, str], code: Code) -> None:
        if self.size <= 0:
            return
        self._items[key] = code
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class SharedGets:
    """MGETs of concurrent callers merged: at most one is out at a time, and the keys asked for while it is out go
    together in the next. An idle worker's lookup goes out at once; a busy one's waits at most one round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiting: list[tuple[list[str | bytes], asyncio.Future[list[bytes | str | None]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def get(self, keys: list[str | bytes]) -> list[bytes | str | None]:
        """The values of ``keys`` (None where missing; bytes unless the client decodes); Redis's error if the MGET
        that carried them failed."""
        future: asyncio.Future[list[bytes | str | None]] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    values = await self.redis.mget([key for keys, _ in batch for key in keys])
                except BaseException as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if not isinstance(error, Exception):  # cancelled: the worker is stopping
                        raise
                    continue
                first = 0
                for keys, future in batch:
                    if not future.done():  # a caller that gave up (cancelled) takes nothing
                        future.set_result(values[first : first + len(keys)])
                    first += len(keys)
        finally:
            self._sender = None
            for _, future in self._waiting:
                if not future.done():
                    future.cancel()


class UserCodeCache:
    def __init__(
        self,
        redis: Redis,
        *,
        ttl_s: int,
        lru_size: int = 100_000,
        on_lookup: Callable[[str, int], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.gets = SharedGets(redis)
        self.ttl_s = ttl_s
        self.lru = LRU(lru_size)
        self.on_lookup = on_lookup or (lambda source, count: None)  # (lru | redis | bundle, how many)
        self.on_error = on_error or (lambda: None)
        self._pending: set[asyncio.Task[None]] = set()

    async def get(self, bundle: Bundle, user_id: str, row: int) -> Code:
        return (await self.get_many(bundle, [(user_id, row)]))[0]

    async def get_many(self, bundle: Bundle, users: list[tuple[str, int]]) -> list[Code]:
        """Codes of (user id, bundle row) pairs, in order."""
        return (await self.lookup(bundle, users))[0]

    async def lookup(
        self, bundle: Bundle, users: list[tuple[str, int]], also: Sequence[bytes] = ()
    ) -> tuple[list[Code], list[bytes | None]]:
        """Codes of (user id, bundle row) pairs, in order, and the values of the keys ``also`` read by the same MGET
        (None where missing, or for all of them when Redis failed): what else a request needs from Redis costs no
        round trip of its own."""
        version, codes = bundle.manifest.model_version, bundle.user_codes
        found: list[Code | None] = [self.lru.get((version, user_id)) for user_id, _ in users]
        missing = [i for i, code in enumerate(found) if code is None]
        self.on_lookup("lru", len(users) - len(missing))
        if not missing and not also:
            return [code for code in found if code is not None], []
        keys = [user_code_key(version, users[i][0]) for i in missing]
        try:
            values = await self.gets.get([*keys, *also])
            reachable = True
        except REDIS_FAILURES as error:
            self.on_error()
            log.warning("redis mget failed, answering from the bundle: %s", error)
            values, reachable = [None] * (len(keys) + len(also)), False
        cached = values[: len(keys)]
        width = codes.shape[1] * codes.dtype.itemsize
        writes: list[tuple[str, bytes]] = []
        for i, key, value in zip(missing, keys, cached, strict=True):
            user_id, row = users[i]
            if isinstance(value, bytes) and len(value) == width:
                code: Code = np.frombuffer(value, dtype=codes.dtype)
            else:
                code = np.asarray(codes[row])
                writes.append((key, code.tobytes()))
            self.lru.put((version, user_id), code)
            found[i] = code
        self.on_lookup("redis", len(missing) - len(writes))
        self.on_lookup("bundle", len(writes))
        if writes and reachable:  # written in the background: the answer does not wait for the cache
            task = asyncio.create_task(self._store(writes))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        extra = [value if isinstance(value, bytes) else None for value in values[len(keys) :]]
        return [code for code in found if code is not None], extra

    async def _store(self, writes: list[tuple[str, bytes]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in writes:
                    pipe.set(key, value, ex=self.ttl_s)
                await pipe.execute()
        except REDIS_FAILURES as error:
            self.on_error()
            log.warning("redis write of %d codes failed: %s", len(writes), error)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except REDIS_FAILURES:
            return False
