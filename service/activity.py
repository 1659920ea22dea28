"""What users just did, as the serving model sees it: recording events, and the codes their recent items give.

A user's fresh code is the bundle's cold-start encoder applied to their trained history (the bundle's seen row)
together with their recent items, or to the recent items alone for a user the model never saw. ``POST /events``
records the events (``service.event_store``) and stores each changed user's fresh code for the serving model;
``/recommend`` reads a user's history and fresh code in the MGET that fetches user codes, and codes a history whose
code is missing for the serving model (a model swap, an expiry) on the request. A bundle without an encoder still
records events and excludes the recent items; its users keep their bundle codes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from index.bundle import Bundle
from service.event_store import REVISION_BYTES, Event, EventStore, RecentHistory
from service.model import ServingModel
from service.schemas import EventStatus
from service.user_codes import REDIS_FAILURES, Code

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One event of ``POST /events``; no timestamp means now."""

    user_id: str
    item_id: str
    timestamp: float | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recent:
    """A user's recent history, and the serving model's code of it when one is stored and current."""

    history: RecentHistory
    code: Code | None


# (user id, revision of the history it codes, code)
FreshCode = tuple[str, bytes, Code]


class UserActivity:
    def __init__(
        self,
        store: EventStore,
        *,
        on_event: Callable[[EventStatus, int], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.on_event = on_event or (lambda status, count: None)
        self.on_error = on_error or (lambda: None)
        self._pending: set[asyncio.Task[None]] = set()

    def lookup_keys(self, model_version: str, user_ids: Sequence[str]) -> list[bytes]:
        """The keys ``read`` takes the values of, in order: two per user."""
        return [key for user_id in user_ids for key in self.store.lookup_keys(model_version, user_id)]

    @staticmethod
    def read(bundle: Bundle, values: Sequence[bytes | None]) -> list[Recent | None]:
        """Each user's ``Recent`` from the values of its ``lookup_keys`` (None: no recent history)."""
        codes = bundle.user_codes
        width = REVISION_BYTES + codes.shape[1] * codes.dtype.itemsize
        out: list[Recent | None] = []
        for raw, fresh in zip(values[::2], values[1::2], strict=True):
            history = RecentHistory.parse(raw) if raw else None
            if history is None:
                out.append(None)
                continue
            current = fresh is not None and len(fresh) == width and fresh[:REVISION_BYTES] == history.revision
            code = np.frombuffer(fresh, dtype=codes.dtype, offset=REVISION_BYTES) if current and fresh else None
            out.append(Recent(history, code))
        return out

    @staticmethod
    def items(bundle: Bundle, row: int | None, history: RecentHistory) -> npt.NDArray[np.int64]:
        """The item rows a user's fresh code is derived from: the trained history (if the model knows the user) and
        the recent items the model knows; none when it knows none of those (the user's code is then the bundle's)."""
        recent = bundle.item_rows(list(history.item_ids))
        return recent if row is None or recent.size == 0 else np.union1d(bundle.seen_items(row), recent)

    def remember(self, model_version: str, fresh: list[FreshCode]) -> None:
        """Store codes derived on a request, in the background: the answer does not wait for them."""
        if fresh:
            task = asyncio.create_task(self._store(model_version, fresh))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _store(self, model_version: str, fresh: list[FreshCode]) -> None:
        try:
            await self.store.store_codes(model_version, [(user, rev, code.tobytes()) for user, rev, code in fresh])
        except REDIS_FAILURES as error:  # the next request codes them again
            self.on_error()
            log.warning("redis write of %d fresh codes failed: %s", len(fresh), error)

    async def record(self, model: ServingModel, events: Sequence[UserEvent], *, now: float) -> list[EventStatus]:
        """Record the events whose items the model knows and store the fresh codes of the users they changed; each
        event's status, in order. Redis's error if it failed or did not answer: the batch, one script, was then
        recorded whole or not at all, and a retry records each event id once (an event without one moves its item's
        timestamp; the items are a set, so the history is the same)."""
        bundle = model.bundle
        statuses: list[EventStatus] = ["unknown_item"] * len(events)
        positions: dict[str, list[int]] = {}
        batch: dict[str, list[Event]] = {}
        for position, event in enumerate(events):
            if bundle.item_row(event.item_id) is None:
                continue
            positions.setdefault(event.user_id, []).append(position)
            timestamp = now if event.timestamp is None else event.timestamp
            batch.setdefault(event.user_id, []).append(Event(event.item_id, timestamp, event.event_id))
        done = await self.store.record(batch, now=now)
        fresh: list[FreshCode] = []
        for user_id, user_positions in positions.items():
            recorded = done[user_id]
            for position, new in zip(user_positions, recorded.recorded, strict=True):
                statuses[position] = "accepted" if new else "duplicate"
            if model.cold_start is None or recorded.history is None or not any(recorded.recorded):
                continue
            items = self.items(bundle, bundle.user_row(user_id), recorded.history)
            if items.size:
                fresh.append((user_id, recorded.history.revision, model.cold_start.code(items)))
                await asyncio.sleep(0)  # a batch of many users lets the worker's other requests in between
        for status in ("accepted", "duplicate", "unknown_item"):
            self.on_event(status, statuses.count(status))
        try:  # awaited: the user's next /recommend, on any replica, finds it
            await self.store.store_codes(model.version, [(u, rev, code.tobytes()) for u, rev, code in fresh])
        except REDIS_FAILURES as error:  # the events are recorded: the next /recommend codes the user itself
            self.on_error()
            log.warning("redis write of %d fresh codes failed: %s", len(fresh), error)
        return statuses
