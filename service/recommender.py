"""The serving model: a verified bundle, its item index, and the single thread that owns the index.

FAISS indexes (GPU ones in particular) are not safe to search from several threads, and a search
must not block the event loop: every search runs on one dedicated executor thread.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from index.bundle import Bundle
from index.item_index import DevicePreference, ItemIndex
from service.schemas import Recommendation, RecommendedItem
from service.user_codes import UserCodeCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    bundle: Bundle
    index: ItemIndex

    @property
    def version(self) -> str:
        return self.bundle.manifest.model_version

    @classmethod
    def load(cls, root: Path, *, device: DevicePreference = "auto", backend: str = "auto") -> ServingModel:
        """Load and verify the CURRENT bundle, load (or build) its index and self-check it."""
        bundle = Bundle.load(root)
        index = ItemIndex.for_bundle(bundle, device=device, backend=backend)
        log.info(
            "loaded model %s from %s (search backend %s)", bundle.manifest.model_version, bundle.path, index.backend
        )
        return cls(bundle=bundle, index=index)


class Recommender:
    def __init__(self, model: ServingModel, codes: UserCodeCache) -> None:
        self.model = model
        self.codes = codes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="item-index")

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def popular(self, model: ServingModel, user_id: str, k: int) -> Recommendation:
        rows = model.bundle.popular[:k]
        return Recommendation(
            user_id=user_id,
            model_version=model.version,
            source="popular",
            items=[RecommendedItem(item_id=model.bundle.item_ids[r], score=None) for r in rows],
        )

    async def recommend(self, user_id: str, k: int, *, exclude_seen: bool) -> Recommendation:
        model = self.model  # one snapshot per request: a swap mid-request cannot mix versions
        row = model.bundle.user_row(user_id)
        if row is None:
            return self.popular(model, user_id, k)
        code = await self.codes.get(model.bundle, user_id, row)
        exclude = [model.bundle.seen_items(row)] if exclude_seen else None
        scales = model.bundle.user_scales
        query_scales = scales[row : row + 1] if scales is not None else None
        search = partial(model.index.search, code[None, :], k, exclude=exclude, query_scales=query_scales)
        result = await asyncio.get_running_loop().run_in_executor(self._executor, search)
        items = [
            RecommendedItem(item_id=model.bundle.item_ids[i], score=float(s))
            for i, s in zip(result.ids[0].tolist(), result.scores[0].tolist(), strict=True)
            if i >= 0
        ]
        return Recommendation(user_id=user_id, model_version=model.version, source="codes", items=items)
