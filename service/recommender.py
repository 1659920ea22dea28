"""The recommender: answers from the serving model, and swaps in a new one.

Searches go through the micro-batcher, the single owner of the index. A new model is loaded, checked
and warmed on a worker thread while the old one keeps answering, then swapped in by one assignment;
each request reads ``self.model`` once, so no answer mixes two versions. A bundle that fails to load is
refused and the old model stays.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.bundle import MANIFEST, resolve_bundle_path
from service.activity import FreshCode, Recent, UserActivity
from service.batcher import NO_ITEMS, MicroBatcher
from service.metrics import ServiceMetrics
from service.model import ModelLoader, ModelLoadError, ServingModel, describe
from service.schemas import Answer, Source
from service.user_codes import UserCodeCache
from service.workers import WorkerVersions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How one user of a request is answered: which code is searched (none: the popular items)."""

    source: Source
    code: npt.NDArray[Any] | None = None
    excluded: npt.NDArray[np.int64] | None = None
    scales: npt.NDArray[np.floating] | None = None


class Recommender:
    def __init__(
        self,
        model: ServingModel,
        codes: UserCodeCache,
        batcher: MicroBatcher,
        metrics: ServiceMetrics,
        *,
        loader: ModelLoader,
        versions: WorkerVersions | None = None,
        activity: UserActivity | None = None,
    ) -> None:
        self.model = model
        self.activity = activity  # users' recent events (POST /events); None: not enabled
        self.loader = loader  # how a new model is loaded
        self.versions = versions  # several workers: where each says which version it serves
        self.codes = codes
        self.batcher = batcher
        self.metrics = metrics
        self._reload_lock = asyncio.Lock()
        self._serving(model.version)

    def _serving(self, version: str) -> None:
        # Whatever long-lived Python objects a model holds live as long as it serves. Left to the cyclic garbage
        # collector, every full collection walks them all: a stall of tens of milliseconds for
        # whichever requests are in flight. Frozen, collections skip them; reference counting still frees them once
        # the model is swapped out.
        gc.freeze()
        self.metrics.serving(version)
        if self.versions is not None:
            self.versions.publish(version)

    def popular(
        self, model: ServingModel, user_id: str, k: int, exclude: npt.NDArray[np.int64] | None = None
    ) -> Answer:
        """The most popular items the user has not interacted with (``exclude``), without scores."""
        self.metrics.fallbacks.inc()
        rows = model.bundle.popular
        if exclude is not None and exclude.size:
            head = rows[: k + exclude.size]
            rows = head[~np.isin(head, exclude)]
        return Answer(user_id, model.version, "popular", model.bundle.item_ids.take(rows[:k]), None)

    async def recommend(self, user_id: str, k: int, *, exclude_seen: bool) -> Answer:
        return (await self.recommend_many([user_id], k, exclude_seen=exclude_seen))[0]

    async def recommend_many(
        self, user_ids: list[str], k: int, *, exclude_seen: bool, histories: dict[str, list[str]] | None = None
    ) -> list[Answer]:
        """Answers for several users from one model snapshot (one Redis round trip, one batched search).

        ``histories`` gives item ids for users the model does not know (cold start); known users ignore it.
        """
        model = self.model
        bundle = model.bundle
        rows = [bundle.user_row(user_id) for user_id in user_ids]
        known = [(user_id, row) for user_id, row in zip(user_ids, rows, strict=True) if row is not None]
        recents: list[Recent | None] = [None] * len(user_ids)
        if self.activity is None:
            codes = iter(await self.codes.get_many(bundle, known))
        else:  # the users' recent events come in the MGET of their codes
            keys = self.activity.lookup_keys(model.version, user_ids)
            found, values = await self.codes.lookup(bundle, known, keys)
            codes, recents = iter(found), self.activity.read(bundle, values)
        plans: list[Plan] = []
        fresh: list[FreshCode] = []
        for user_id, row, recent in zip(user_ids, rows, recents, strict=True):
            code = next(codes) if row is not None else None
            given = bundle.item_rows((histories or {}).get(user_id, [])) if row is None else NO_ITEMS
            plans.append(self._plan(model, user_id, row, code, given, recent, fresh))
            if plans[-1].source in ("history", "events"):
                # Coding a long history takes the loop for a while: a request of many lets the worker's other
                # requests in between its users rather than after all of them.
                await asyncio.sleep(0)
        if self.activity is not None:
            self.activity.remember(model.version, fresh)
        searched = await self._search(model, [plan for plan in plans if plan.code is not None], k, exclude_seen)
        found = [ids >= 0 for ids, _ in searched]
        # Every answer's item ids decoded in one call: one at a time, 20,000 of them hold the loop for milliseconds.
        names = iter(bundle.item_ids.take(np.concatenate([ids[f] for (ids, _), f in zip(searched, found, strict=True)]))
                     if searched else [])  # fmt: skip
        answers = iter(zip(searched, found, strict=True))
        out = []
        for user_id, plan in zip(user_ids, plans, strict=True):
            if plan.code is None:
                out.append(self.popular(model, user_id, k, plan.excluded if exclude_seen else None))
                continue
            (_, scores), found_items = next(answers)
            item_ids = list(itertools.islice(names, int(found_items.sum())))
            scores_found = scores[found_items].astype(float).tolist()
            out.append(Answer(user_id, model.version, plan.source, item_ids, scores_found))
        return out

    def _plan(
        self,
        model: ServingModel,
        user_id: str,
        row: int | None,
        code: npt.NDArray[Any] | None,
        given: npt.NDArray[np.int64],
        recent: Recent | None,
        fresh: list[FreshCode],
    ) -> Plan:
        """How one user is answered: the code of their recent events when they have some (and the model an
        encoder), else their bundle code, else the code of the history given in the request, else the popular
        items; their recent items are excluded whichever it is."""
        bundle = model.bundle
        excluded = bundle.seen_items(row) if row is not None else given
        if recent is not None:
            items = UserActivity.items(bundle, row, recent.history)
            if items.size:
                # A known user's items hold their trained history already; a new user's, the recent items only.
                excluded = items if row is not None else np.union1d(given, items)
                # The stored code is of the trained and recent items; a history given now needs one of its own.
                events_code = recent.code if given.size == 0 else None
                if events_code is not None:
                    self.metrics.user_code_lookups.labels(source="events").inc()
                elif model.cold_start is not None:
                    events_code = model.cold_start.code(excluded)
                    self.metrics.user_code_lookups.labels(source="events_recoded").inc()
                    if given.size == 0:
                        fresh.append((user_id, recent.history.revision, events_code))
                if events_code is not None:
                    return Plan("events", events_code, excluded)
        if row is not None:
            scales = bundle.user_scales[row] if bundle.user_scales is not None else None
            return Plan("codes", code, excluded, scales)
        if model.cold_start is not None and given.size:
            return Plan("history", model.cold_start.code(given), excluded)
        return Plan("popular", excluded=excluded)

    async def _search(
        self, model: ServingModel, plans: list[Plan], k: int, exclude_seen: bool
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Each plan's item rows and scores: one micro-batcher job for all of a request's users (one future, one
        place in the queue, not one per user)."""
        if not plans:
            return []
        scales = [plan.scales for plan in plans]
        if any(s is None for s in scales) != all(s is None for s in scales):  # cannot stack: one job per user
            searches = [
                self.batcher.search(model, p.code, k, exclude=p.excluded if exclude_seen else None, scales=p.scales)
                for p in plans
                if p.code is not None
            ]
            return list(await asyncio.gather(*searches))
        codes = np.stack([plan.code for plan in plans if plan.code is not None])
        excluded = [plan.excluded if exclude_seen and plan.excluded is not None else NO_ITEMS for plan in plans]
        stacked = None if scales[0] is None else np.stack([s for s in scales if s is not None])
        found = await self.batcher.search_many(model, codes, k, exclude=excluded, scales=stacked)
        return [(found.ids[row], found.scores[row]) for row in range(len(plans))]

    async def reload(self, root: Path) -> tuple[str, str]:
        """Load the bundle ``root`` names and swap it in: (previous version, serving version), or
        ``ModelLoadError`` with the old model serving on."""
        async with self._reload_lock:
            previous = self.model
            try:
                loaded = await asyncio.to_thread(self.loader.load, root)
            except ModelLoadError as error:
                outcome = "refused" if error.refused else "failed"
                self.metrics.model_loads.labels(outcome=outcome).inc()
                said = "refused the bundle" if error.refused else "could not load the bundle"
                log.error("%s under %s, still serving %s: %s", said, root, previous.version, error)
                raise
            self.model = loaded
            self.metrics.model_loads.labels(outcome="loaded").inc()
            self._serving(loaded.version)
            log.info("now serving %s (was %s)", loaded.version, previous.version)
            return previous.version, loaded.version

    async def watch(self, root: Path, interval_s: float) -> None:
        """Reload whenever ``root``'s CURRENT names another bundle. Nothing stops it: a refused bundle is tried again
        once its manifest changes (a publisher that fixed it in place), and any error is logged and waited out."""
        refused: tuple[Path, tuple[int, ...]] | None = None
        warned = ""  # the last problem logged: one that persists is logged once, not at every interval
        while True:
            await asyncio.sleep(interval_s)
            try:
                target = resolve_bundle_path(root)
                seen = (target, manifest_signature(target)) if target != self.model.bundle.path else None
                if seen is not None and seen != refused:
                    try:
                        await self.reload(target)
                        refused = None
                    except ModelLoadError as error:  # a bundle at fault waits for a change; else tried again
                        refused = seen if error.refused else None
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a watcher that died would leave this worker on its version for good
                if (said := describe(error)) != warned:
                    warned = said
                    log.warning("watching %s: %s", root, warned)
            else:
                warned = ""


def manifest_signature(bundle: Path) -> tuple[int, ...]:
    """What changes when a bundle's manifest is rewritten (its inode, size and modification time)."""
    try:
        stat = (bundle / MANIFEST).stat()
    except OSError:
        return ()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
