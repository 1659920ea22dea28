"""Users' recent events in Redis, and the codes derived from them: state that no bundle holds, shared by every replica.

Keys of a user U (ids written as UTF-8, lone surrogates kept so that distinct ids stay distinct keys):

- ``recsys:recent:U``: the user's recent history, a string: its revision (``REVISION_BYTES`` characters) and then a
  JSON list of ``[item id, timestamp]``, most recent first, one entry per item (its latest timestamp), at most
  ``recent_items`` of them, expiring ``ttl_s`` after the last event. Item ids, not codes: it outlives a model swap.
- ``recsys:event-ids:U``: a sorted set of the event ids recorded for U (scored by arrival), the last
  ``remembered_ids`` within ``ttl_s``: a retried event is recognised and changes nothing.
- ``recsys:fresh:V:U``: the code model version V gives U's history, after the revision of the history it came from.

Each update that changes a user's set of recent items gives the history a new revision, a random token. A code is
current exactly when its revision is its history's: one derived from an older history (replica A coded revision r5
while replica B recorded r6) is stored only while r5 is still the history's (the store script checks it) and is
never used once it is not (readers compare). Tokens rather than a counter: a history that expired and began again
cannot repeat a revision that some code still carries.

Every update is one Lua script (append, de-duplicate, cap, expire, all users of a batch at once), so two replicas
recording events of one user at the same time cannot interleave and lose one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

REVISION_BYTES = 32  # uuid4().hex

# KEYS: per user, its history and its event ids. ARGV: now, ttl, cap, remembered, the revision of this update, then
# per user its count of events and, for each, (item id, timestamp, event id or ''). Returns, per user, its history as
# stored afterwards ('' if it has none) and one character per event: '1' recorded, '0' a duplicate event id.
RECORD = """
local now, ttl, cap, remembered = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local revision, a, out = ARGV[5], 6, {}
for k = 1, #KEYS, 2 do
  local history_key, ids_key = KEYS[k], KEYS[k + 1]
  local raw = redis.call('GET', history_key)
  local current, at, before, count_before = '', {}, {}, 0
  if raw then
    current = string.sub(raw, 1, 32)
    for _, pair in ipairs(cjson.decode(string.sub(raw, 33))) do
      at[pair[1]], before[pair[1]], count_before = pair[2], true, count_before + 1
    end
  end
  redis.call('ZREMRANGEBYSCORE', ids_key, '-inf', '(' .. (now - ttl))
  local outcomes, recorded = {}, false
  for _ = 1, tonumber(ARGV[a]) do
    local item, timestamp, id = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
    a = a + 3
    if id ~= '' and redis.call('ZADD', ids_key, 'NX', now, id) == 0 then
      outcomes[#outcomes + 1] = '0'
    else
      outcomes[#outcomes + 1] = '1'
      recorded = true
      if at[item] == nil or at[item] < timestamp then at[item] = timestamp end
    end
  end
  a = a + 1
  if recorded then
    local items = {}
    for item, timestamp in pairs(at) do items[#items + 1] = {item, timestamp} end
    table.sort(items, function(x, y) if x[2] ~= y[2] then return x[2] > y[2] end return x[1] < y[1] end)
    for i = #items, cap + 1, -1 do items[i] = nil end
    local changed = not raw or #items ~= count_before
    for _, pair in ipairs(items) do changed = changed or not before[pair[1]] end
    if changed then current = revision end
    raw = current .. cjson.encode(items)
    redis.call('SET', history_key, raw, 'EX', ttl)
    redis.call('ZREMRANGEBYRANK', ids_key, 0, -remembered - 1)
    redis.call('EXPIRE', ids_key, ttl)
  end
  out[#out + 1] = raw or ''
  out[#out + 1] = table.concat(outcomes)
end
return out
"""

# KEYS: per user, its history and the key of its fresh code. ARGV: the time to live, then per user the code's value
# (the revision it was derived from, then the code). A code whose revision is no longer its history's is dropped.
# Returns how many were stored.
STORE_CODES = """
local stored = 0
for k = 1, #KEYS, 2 do
  local value = ARGV[(k + 1) / 2 + 1]
  local raw = redis.call('GET', KEYS[k])
  if raw and string.sub(raw, 1, 32) == string.sub(value, 1, 32) then
    redis.call('SET', KEYS[k + 1], value, 'EX', ARGV[1])
    stored = stored + 1
  end
end
return stored
"""


def key(*parts: str) -> bytes:
    return ":".join(parts).encode("utf-8", errors="surrogatepass")


def history_key(user_id: str) -> bytes:
    return key("recsys", "recent", user_id)


def event_ids_key(user_id: str) -> bytes:
    return key("recsys", "event-ids", user_id)


def fresh_code_key(model_version: str, user_id: str) -> bytes:
    return key("recsys", "fresh", model_version, user_id)


def new_revision() -> bytes:
    return uuid.uuid4().hex.encode()


@dataclass(frozen=True, slots=True)
class RecentHistory:
    """A user's recent items, most recent first, and the revision that names this set of items."""

    revision: bytes
    item_ids: tuple[str, ...]

    @classmethod
    def parse(cls, raw: bytes) -> RecentHistory | None:
        """The history a stored value holds; None for a value that is not one (no history is better than a wrong
        one)."""
        try:
            pairs = json.loads(raw[REVISION_BYTES:])
            items = tuple(str(item) for item, _ in pairs)
        except (ValueError, TypeError):
            return None
        if len(raw) <= REVISION_BYTES or not items:
            return None
        return cls(raw[:REVISION_BYTES], items)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a user, as stored: the item, when (seconds since the epoch), and the client's id, if any."""

    item_id: str
    timestamp: float
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording a user's events did: the history afterwards, and for each event whether it was recorded
    (False: its event id had been recorded already)."""

    history: RecentHistory | None
    recorded: tuple[bool, ...]


class EventStore:
    """Recent histories and fresh codes in Redis; every call raises Redis's error when Redis fails.

    Example::

        store = EventStore(redis, recent_items=50, ttl_s=604800, remembered_ids=1000)
        done = await store.record({"u1": [Event("i42", time.time(), "order-17")]}, now=time.time())
        done["u1"].history  # RecentHistory(revision=b'…', item_ids=('i42', …))
    """

    def __init__(self, redis: Redis, *, recent_items: int, ttl_s: int, remembered_ids: int) -> None:
        self.redis = redis
        self.recent_items = recent_items
        self.ttl_s = ttl_s
        self.remembered_ids = remembered_ids
        self._record = redis.register_script(RECORD)
        self._store_codes = redis.register_script(STORE_CODES)

    async def record(self, events: Mapping[str, list[Event]], *, now: float) -> dict[str, Recorded]:
        """Append each user's events to their history, atomically for the whole batch (one script call)."""
        if not events:
            return {}
        keys: list[bytes] = []
        args: list[bytes | str | int | float] = [repr(now), self.ttl_s, self.recent_items, self.remembered_ids]
        args.append(new_revision())
        for user_id, user_events in events.items():
            keys += [history_key(user_id), event_ids_key(user_id)]
            args.append(len(user_events))
            for event in user_events:
                event_id = (event.event_id or "").encode("utf-8", errors="surrogatepass")
                args += [event.item_id, repr(float(event.timestamp)), event_id]
        replies = await self._record(keys=keys, args=args)
        out: dict[str, Recorded] = {}
        for number, user_id in enumerate(events):
            raw, outcomes = replies[2 * number], replies[2 * number + 1]
            history = RecentHistory.parse(raw) if raw else None
            out[user_id] = Recorded(history, tuple(flag == ord("1") for flag in bytes(outcomes)))
        return out

    async def store_codes(self, model_version: str, codes: list[tuple[str, bytes, bytes]]) -> int:
        """Store (user id, revision, code bytes) for the model version, each only if its revision is still its
        user's; how many were stored."""
        if not codes:
            return 0
        keys = [k for user_id, _, _ in codes for k in (history_key(user_id), fresh_code_key(model_version, user_id))]
        stored = await self._store_codes(keys=keys, args=[self.ttl_s, *(rev + code for _, rev, code in codes)])
        return int(stored)

    @staticmethod
    def lookup_keys(model_version: str, user_id: str) -> tuple[bytes, bytes]:
        """What a lookup of the user reads: its history and its fresh code for the model version."""
        return history_key(user_id), fresh_code_key(model_version, user_id)
