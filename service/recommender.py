"""The serving model (a verified bundle and its index) and the recommender that answers from it.

Searches go through the micro-batcher, the single owner of the index. A new model is loaded, checked
and warmed on a worker thread while the old one keeps answering, then swapped in by one assignment;
each request reads ``self.model`` once, so no answer mixes two versions. A bundle that fails to load is
refused and the old model stays.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.bundle import MANIFEST, Bundle, BundleError, resolve_bundle_path
from index.item_index import DevicePreference, ItemIndex, Reranker
from service.batcher import NO_ITEMS, MicroBatcher
from service.cold_start import ColdStart
from service.metrics import ServiceMetrics
from service.schemas import Answer, Source
from service.search_client import RemoteBackend, SearchObserver
from service.settings import ServiceSettings
from service.user_codes import UserCodeCache
from service.workers import WorkerVersions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    bundle: Bundle
    index: ItemIndex

    @cached_property
    def cold_start(self) -> ColdStart | None:
        """Codes for unknown users from their items, when the bundle carries what that needs."""
        section = self.bundle.cold_start
        return ColdStart(section) if section is not None else None

    @property
    def version(self) -> str:
        return self.bundle.manifest.model_version

    @classmethod
    def load(
        cls,
        root: Path,
        *,
        device: DevicePreference = "auto",
        backend: str = "auto",
        warm_batch: int = 1,
        search_socket: Path | None = None,
        search_timeout_s: float = 5.0,
        observe_search: SearchObserver | None = None,
    ) -> ServingModel:
        """Load and verify the CURRENT bundle, load (or build) its index, self-check and warm it (on a GPU at every
        batch shape up to ``warm_batch`` queries, the micro-batcher's largest). With ``search_socket`` the search
        process holds the index's backend (loaded, checked and warmed there) and searches through it answer within
        ``search_timeout_s`` or raise ``SearchUnavailable``."""
        bundle = Bundle.load(root)  # which checks the cold-start section too
        if search_socket is not None:
            index = cls.remote_index(bundle, search_socket, search_timeout_s, observe_search)
        else:
            index = ItemIndex.for_bundle(bundle, device=device, backend=backend)
            index.warm(warm_batch)
        if bundle.manifest.n_users and index.n_items:  # warm-up: the first real request pays no first-call cost
            scales = bundle.user_scales[:1] if bundle.user_scales is not None else None
            index.search(np.asarray(bundle.user_codes[:1]), min(10, index.n_items), query_scales=scales)
        log.info(
            "loaded model %s from %s (search backend %s)", bundle.manifest.model_version, bundle.path, index.backend
        )
        return cls(bundle=bundle, index=index)

    @classmethod
    def for_settings(
        cls,
        settings: ServiceSettings,
        root: Path | None = None,
        *,
        warm_batch: int,
        observe_search: SearchObserver | None = None,
    ) -> ServingModel:
        """``load`` as the service's settings say (``root``: a bundle other than the one they name)."""
        return cls.load(
            root if root is not None else settings.bundle_root, device=settings.device,
            backend=settings.retrieval_backend, warm_batch=warm_batch, search_socket=settings.search_socket,
            search_timeout_s=settings.search_timeout_s, observe_search=observe_search,
        )  # fmt: skip

    @staticmethod
    def remote_index(
        bundle: Bundle, search_socket: Path, timeout_s: float, observe: SearchObserver | None
    ) -> ItemIndex:
        """An ``ItemIndex`` of the bundle whose backend is the search process's: everything but the backend's
        search runs here, so the answers are those of the in-process index."""
        remote = RemoteBackend.open(search_socket, bundle.path, timeout_s=timeout_s, observe=observe)
        if remote.n_items != bundle.manifest.n_items:
            raise ValueError(f"the search process's index of {bundle.path} has {remote.n_items} items")
        index = ItemIndex(
            remote if remote.n_items else None, n_items=remote.n_items, layout=bundle.layout, dim=bundle.dim,
            rerank=Reranker.of_bundle(bundle),
            user_layout=bundle.user_layout,
        )  # fmt: skip
        index.self_check(bundle.item_codes)  # one round trip: this worker and the search process agree
        return index


@dataclass(frozen=True)
class Plan:
    """How one user of a request is answered: which code is searched (none: the popular items)."""

    source: Source
    code: npt.NDArray[Any] | None = None
    excluded: npt.NDArray[np.int64] | None = None
    scales: npt.NDArray[np.floating] | None = None


class ModelRefused(Exception):
    """A new bundle failed to load; the old model keeps serving."""


class Recommender:
    def __init__(
        self,
        model: ServingModel,
        codes: UserCodeCache,
        batcher: MicroBatcher,
        metrics: ServiceMetrics,
        *,
        settings: ServiceSettings,
        versions: WorkerVersions | None = None,
    ) -> None:
        self.model = model
        self.settings = settings  # how a new model is loaded
        self.versions = versions  # several workers: where each says which version it serves
        self.codes = codes
        self.batcher = batcher
        self.metrics = metrics
        self._reload_lock = asyncio.Lock()
        self._serving(model.version)

    def _serving(self, version: str) -> None:
        # A model holds millions of Python objects (id lists, the user-id map) that live as long as it serves. Left
        # to the cyclic garbage collector, every full collection walks them all: a stall of tens of milliseconds for
        # whichever requests are in flight. Frozen, collections skip them; reference counting still frees them once
        # the model is swapped out.
        gc.freeze()
        self.metrics.serving(version)
        if self.versions is not None:
            self.versions.publish(version)

    def popular(self, model: ServingModel, user_id: str, k: int) -> Answer:
        self.metrics.fallbacks.inc()
        ids = model.bundle.item_ids
        return Answer(user_id, model.version, "popular", [ids[r] for r in model.bundle.popular[:k].tolist()], None)

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
        codes = iter(await self.codes.get_many(bundle, known))
        plans: list[Plan] = []
        for user_id, row in zip(user_ids, rows, strict=True):
            if row is not None:
                scales = bundle.user_scales[row] if bundle.user_scales is not None else None
                plans.append(Plan("codes", next(codes), bundle.seen_items(row), scales))
                continue
            history = bundle.item_rows((histories or {}).get(user_id, []))
            if model.cold_start is None or history.size == 0:
                plans.append(Plan("popular"))
            else:
                plans.append(Plan("history", model.cold_start.code(history), history))
                # Coding a long history takes the loop for a while: a request of many lets the worker's other
                # requests in between its users rather than after all of them.
                await asyncio.sleep(0)
        answers = iter(await self._search(model, [plan for plan in plans if plan.code is not None], k, exclude_seen))
        out = []
        for user_id, plan in zip(user_ids, plans, strict=True):
            if plan.code is None:
                out.append(self.popular(model, user_id, k))
                continue
            ids, scores = next(answers)
            found = ids >= 0
            item_ids = [bundle.item_ids[i] for i in ids[found].tolist()]
            out.append(Answer(user_id, model.version, plan.source, item_ids, scores[found].astype(float).tolist()))
        return out

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
        """Load the bundle ``root`` names and swap it in; (previous version, serving version) or ModelRefused."""
        async with self._reload_lock:
            previous = self.model
            try:
                loaded = await asyncio.to_thread(
                    ServingModel.for_settings,
                    self.settings,
                    root,
                    warm_batch=self.batcher.max_batch,
                    observe_search=self.metrics.observe_owner_search,
                )
            except Exception as error:  # whatever failed, the candidate is refused and the old model serves on
                self.metrics.model_loads.labels(outcome="refused").inc()
                log.error("refused bundle under %s, still serving %s: %s", root, previous.version, describe(error))
                raise ModelRefused(describe(error)) from error
            self.model = loaded
            self.metrics.model_loads.labels(outcome="loaded").inc()
            self._serving(loaded.version)
            log.info("now serving %s (was %s)", loaded.version, previous.version)
            return previous.version, loaded.version

    async def watch(self, root: Path, interval_s: float) -> None:
        """Reload whenever ``root``'s CURRENT names another bundle. Nothing stops it: a refused bundle is tried again
        once its manifest changes (a publisher that fixed it in place), and any error is logged and waited out."""
        refused: tuple[Path, tuple[int, ...]] | None = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                target = resolve_bundle_path(root)
                if target == self.model.bundle.path:
                    continue
                seen = (target, manifest_signature(target))
                if seen == refused:
                    continue
                try:
                    await self.reload(target)
                    refused = None
                except ModelRefused:
                    refused = seen
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a watcher that died would leave this worker on its version for good
                log.warning("watching %s: %s", root, describe(error))


def describe(error: BaseException) -> str:
    """One line for a failure: its message, and its type where the message alone does not say what happened."""
    if isinstance(error, BundleError | ValueError | ModelRefused) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def manifest_signature(bundle: Path) -> tuple[int, ...]:
    """What changes when a bundle's manifest is rewritten (its inode, size and modification time)."""
    try:
        stat = (bundle / MANIFEST).stat()
    except OSError:
        return ()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
