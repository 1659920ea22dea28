"""Exact Top-K over item codes: Hamming search for low-bit codes, inner product for floats.

An ``index.retrieval`` backend searches the items' search forms, computed from the item codes the index holds
(our Triton kernel on a GPU, FAISS or a counting pass on a CPU for codes; FAISS ``IndexFlatIP`` for floats); a
bundle may also store the FAISS index over those forms, which the FAISS backends then search. Backends answer in
exact order (score desc, item id asc) but do not filter seen items, so ``ItemIndex`` over-fetches, filters, and
widens the fetch for queries left with fewer than k items; with item scales it re-ranks candidates exactly.
Results are exact and deterministic whichever backend runs.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.bundle import Bundle, BundleError, read_part
from index.codes import (
    CodeLayout,
    ScaleMode,
    as_query,
    check_pairing,
    check_scales,
    code_dtype,
    code_width,
    dequantize,
    item_search_form,
    query_search_form,
    scores_from_distances,
    search_dim,
)
from index.hamming import exact_scores
from index.retrieval import (
    MAX_K,
    SearchBackend,
    TopK,
    backend_for_index,
    backend_for_items,
    fetch_groups,
    has_faiss,
    read_stored_index,
    serialize_stored_index,
    stored_forms,
    stored_index,
    uses_faiss,
)
from index.retrieval import DevicePreference as DevicePreference  # the service and CLI name it here
from index.retrieval.chunking import warm_shapes

log = logging.getLogger(__name__)


DEFAULT_RERANK_FACTOR = 10  # Hamming candidates per requested item when item scales re-rank
DEFAULT_HEAVY_ITEMS = 500  # largest-norm items added to every re-rank's candidates


@dataclass(frozen=True)
class Reranker:
    """Item codes and scales kept beside the index, to score Hamming candidates exactly.

    Hamming distance sees only the code's direction; with scales, an item's magnitude moves its score
    as much. So the candidates are the Hamming neighbours plus the items of largest norm (``heavy``):
    on Gowalla with BiGeaR codes, 10 × k Hamming candidates alone kept 70 % of the exact Recall@20 and
    with the 500 heaviest items added 99 % (BENCHMARKS.md).
    """

    item_codes: npt.NDArray[np.uint8]
    item_scales: npt.NDArray[np.float32]
    mode: ScaleMode
    heavy: npt.NDArray[np.int64]
    factor: int = DEFAULT_RERANK_FACTOR

    @classmethod
    def of(
        cls,
        item_codes: npt.NDArray[Any],
        item_scales: npt.NDArray[np.floating] | None,
        mode: ScaleMode | None,
        layout: CodeLayout,
        dim: int,
        factor: int = DEFAULT_RERANK_FACTOR,
        heavy_items: int = DEFAULT_HEAVY_ITEMS,
    ) -> Reranker | None:
        if item_scales is None:
            return None
        check_scales(layout, dim, item_scales, mode, item_codes.shape[0])
        assert mode is not None
        codes, scales = np.asarray(item_codes, np.uint8), np.asarray(item_scales, np.float32)
        norms = np.concatenate(
            [
                np.linalg.norm(dequantize(codes[s : s + 65536], layout, dim, scales[s : s + 65536], mode), axis=1)
                for s in range(0, codes.shape[0], 65536)
            ]
        )
        heavy = np.sort(np.argsort(-norms, kind="stable")[:heavy_items]).astype(np.int64)
        return cls(codes, scales, mode, heavy, factor)

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> Reranker | None:
        """The re-ranker of a bundle's items (None: its codes have no scales)."""
        return cls.of(bundle.item_codes, bundle.item_scales, bundle.manifest.scale_mode, bundle.layout, bundle.dim)

    def item_vectors(self, ids: npt.NDArray[np.int64], layout: CodeLayout, dim: int) -> npt.NDArray[np.float32]:
        return dequantize(self.item_codes[ids], layout, dim, self.item_scales[ids], self.mode)


# The least reach ``warm_reach`` takes from a bundle: k = 20 plus a few hundred seen items to skip (a power of two).
WARM_MAX_FETCH = 256


def warm_reach(bundle: Bundle, k: int) -> int:
    """The widest fetch a request for ``k`` results makes on ``bundle``: ``k`` plus its most-seen user's items,
    at least ``WARM_MAX_FETCH`` and at most ``MAX_K``.

    One search fetches at its batch's largest fetch, so a single heavy user moves the whole batch onto a shape
    warm-up never made; its first occurrence compiles kernels and captures a graph while every request of the batch
    waits. A reach taken from the bundle makes those shapes before the server turns ready."""
    heaviest = int(np.diff(bundle.seen_indptr).max()) if bundle.manifest.n_users else 0
    return min(MAX_K, max(WARM_MAX_FETCH, k + heaviest))


Fetched = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]  # a fetch's item ids and exact scores, per query
# A search as a generator: it yields (queries, fetch) for the backend and is sent what came back (see ItemIndex._steps).
Steps = Generator[tuple[npt.NDArray[Any], int], Fetched, "SearchResult"]


class IndexSelfCheckError(RuntimeError):
    """The index returned wrong results for codes it holds (e.g. a GPU build without code for the card)."""


@dataclass(frozen=True)
class SearchResult:
    """Row q holds query q's items (internal ids, best first) and exact scores; -1 pads short rows."""

    ids: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]


def check_search_arguments(query_codes: npt.NDArray[Any], k: int, exclude: list[npt.NDArray[np.int64]] | None) -> None:
    """The refusals every index answering ``search(query_codes, k, exclude=...)`` makes before any work."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if exclude is not None and len(exclude) != len(query_codes):
        raise ValueError(f"exclude has {len(exclude)} rows for {len(query_codes)} queries")


def check_stored_items(bundle: Bundle, stored: Any) -> None:
    """Refuse a stored index that does not hold exactly the bundle's items, in the bundle's order: its file passes
    its checksum whatever it holds, and a self-check of a few items would serve the rest wrong."""
    path, n_items = bundle.index_path, bundle.manifest.n_items
    expected_d = search_dim(bundle.layout, bundle.dim, bundle.user_layout)
    if stored.d != expected_d or int(stored.ntotal) != n_items:
        raise BundleError(
            f"{path}: {int(stored.ntotal)} items of d={stored.d}, the bundle has {n_items} of d={expected_d}"
        )
    forms = stored_forms(stored)
    for start in range(0, n_items, 1 << 20):
        rows = slice(start, start + (1 << 20))
        expected = item_search_form(bundle.item_codes[rows], bundle.layout, bundle.dim, bundle.user_layout)
        if not np.array_equal(forms[rows], expected):
            raise BundleError(f"{path}: its items {start}… differ from the bundle's item codes")


def checked_stored_index(bundle: Bundle) -> Any | None:
    """The bundle's stored FAISS index, checked to hold exactly its items; None where it stores none, or where
    FAISS, which alone reads it, is not installed (the backends then search the bundle's codes)."""
    if bundle.index_path is None:
        return None
    if not has_faiss():
        log.info("%s not read: FAISS is not installed, the bundle's item codes are searched", bundle.index_path)
        return None
    stored = read_part(bundle.index_path, partial(read_stored_index, binary=bundle.layout.is_binary))
    check_stored_items(bundle, stored)
    return stored


class ItemIndex:
    """Top-K search over one bundle's items.

    The index holds the items' codes (a bundle's are memory-mapped, ``Bundle.load``) and its backend searches their
    search forms where they lie: several worker processes loading one bundle then share its codes through the page
    cache instead of each holding a copy. A backend that needs them elsewhere copies them itself: FAISS into its
    own index (or searches the one a bundle stores), Triton or torch onto a device, and the 2-bit or asymmetric
    search forms are computed once from the codes.

    Example::

        index = ItemIndex.build(item_codes, CodeLayout.SIGN1, dim=64)
        result = index.search(user_codes[:2], k=20, exclude=[seen_0, seen_1])
    """

    def __init__(
        self,
        retrieval: SearchBackend | None,
        *,
        layout: CodeLayout,
        dim: int,
        item_codes: npt.NDArray[Any] | None = None,
        n_items: int | None = None,
        rerank: Reranker | None = None,
        user_layout: CodeLayout | None = None,
        stored: Any | None = None,
    ) -> None:
        """``retrieval`` searches the items' search forms (None: there are no items); ``item_codes`` are the items'
        codes, ``n_items`` their count where this process holds no codes (a stored index read alone, a search
        process's backend); ``stored`` is the FAISS index a bundle stores, when this index was read from one or its
        backend searches one (``serialize`` writes it)."""
        if item_codes is None and n_items is None:
            raise ValueError("an item index needs its items' codes or their count")
        if item_codes is not None and n_items is not None and n_items != item_codes.shape[0]:
            raise ValueError(f"n_items={n_items} but {item_codes.shape[0]} item codes")
        self.layout = layout
        self.user_layout = user_layout or layout  # queries' layout: more bits than the items' for asymmetric codes
        check_pairing(self.user_layout, layout, scaled=rerank is not None)
        self.dim = dim
        self.rerank = rerank
        self.item_codes = item_codes
        self.n_items = int(item_codes.shape[0]) if item_codes is not None else int(n_items or 0)
        self._stored = stored
        self.retrieval = retrieval
        self.backend = retrieval.name if retrieval is not None else "none"  # none: no items to search
        log.info("item index ready: %d items, layout %s, d=%d, backend %s", self.n_items, layout, dim, self.backend)

    @classmethod
    def over_stored(
        cls,
        stored: Any,
        *,
        layout: CodeLayout,
        dim: int,
        device: DevicePreference = "auto",
        rerank: Reranker | None = None,
        backend: str = "auto",
        user_layout: CodeLayout | None = None,
    ) -> ItemIndex:
        """An index searching a stored FAISS index's items, without their codes, with ``backend`` on ``device``."""
        retrieval = backend_for_index(stored, backend, device=device)
        return cls(
            retrieval, n_items=int(stored.ntotal), layout=layout, dim=dim, rerank=rerank, user_layout=user_layout,
            stored=stored,
        )  # fmt: skip

    @property
    def on_gpu(self) -> bool:
        return self.retrieval is not None and self.retrieval.on_gpu

    @classmethod
    def build(
        cls,
        item_codes: npt.NDArray[Any],
        layout: CodeLayout,
        dim: int,
        *,
        device: DevicePreference = "auto",
        item_scales: npt.NDArray[np.floating] | None = None,
        scale_mode: ScaleMode | None = None,
        rerank_factor: int = DEFAULT_RERANK_FACTOR,
        heavy_items: int = DEFAULT_HEAVY_ITEMS,
        backend: str = "auto",
        user_layout: CodeLayout | None = None,
        stored: Any | None = None,
    ) -> ItemIndex:
        """An index over ``item_codes`` searched by ``backend`` on ``device``. ``stored``: a FAISS index holding
        exactly these items' search forms (``check_stored_items``), searched in place of the codes' own forms."""
        expected = code_width(layout, dim)
        if item_codes.ndim != 2 or item_codes.shape[1] != expected:
            raise ValueError(f"item codes must have {expected} columns for {layout} d={dim}, got {item_codes.shape}")
        forms = stored_forms(stored) if stored is not None else item_search_form(item_codes, layout, dim, user_layout)
        retrieval = backend_for_items(forms, backend, device=device, stored=stored)
        rerank = Reranker.of(item_codes, item_scales, scale_mode, layout, dim, rerank_factor, heavy_items)
        return cls(
            retrieval, item_codes=item_codes, layout=layout, dim=dim, rerank=rerank, user_layout=user_layout,
            stored=stored,
        )  # fmt: skip

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        layout: CodeLayout,
        dim: int,
        device: DevicePreference = "auto",
        rerank: Reranker | None = None,
        backend: str = "auto",
        user_layout: CodeLayout | None = None,
    ) -> ItemIndex:
        """An index over the items of a FAISS index file alone (``index.faiss``)."""
        cpu_index = read_stored_index(path, binary=layout.is_binary)
        expected_d = search_dim(layout, dim, user_layout)
        if cpu_index.d != expected_d:
            raise ValueError(f"{path}: index has d={cpu_index.d}, the bundle's codes need {expected_d}")
        return cls.over_stored(
            cpu_index, layout=layout, dim=dim, device=device, rerank=rerank, backend=backend, user_layout=user_layout
        )

    @classmethod
    def for_bundle(cls, bundle: Bundle, *, device: DevicePreference = "auto", backend: str = "auto") -> ItemIndex:
        """The index of a bundle's item codes, searched by ``backend`` on ``device`` and self-checked.

        A FAISS backend searches the bundle's stored index when it has one (else builds its own); every other
        backend searches the codes. Where FAISS is installed a stored index is checked against the codes whichever
        backend runs, so every backend refuses the same bundles; without FAISS nothing here can read it."""
        layout, dim, user_layout = bundle.layout, bundle.dim, bundle.user_layout
        forms_shape = (bundle.manifest.n_items, search_dim(layout, dim, user_layout) // (8 if layout.is_binary else 1))
        # First: a FAISS backend named where FAISS is not installed is refused before anything is read.
        searches_stored = uses_faiss(backend, device, forms_shape, binary=layout.is_binary)
        stored = checked_stored_index(bundle)  # None without one, or without FAISS to read it
        if not searches_stored:
            stored = None  # checked, not searched: this backend searches the (mapped) codes
        index = cls.build(
            bundle.item_codes, layout, dim, device=device, item_scales=bundle.item_scales,
            scale_mode=bundle.manifest.scale_mode, backend=backend, user_layout=user_layout, stored=stored,
        )  # fmt: skip
        index.self_check()
        return index

    def serialize(self) -> bytes:
        """The FAISS index of the items as a bundle stores it (``index.faiss``), CPU form (GPU placement is a runtime
        choice, not a file format): the one this index read or searches, else one built from the codes (which needs
        FAISS)."""
        if self._stored is not None:
            return serialize_stored_index(self._stored)
        if self.item_codes is None:
            raise ValueError("this index searches through another process's backend: it holds nothing to write")
        return serialize_stored_index(
            stored_index(item_search_form(self.item_codes, self.layout, self.dim, self.user_layout))
        )

    def self_check(self, item_codes: npt.NDArray[Any] | None = None, *, samples: int = 4, k: int = 10) -> None:
        """Search a few items' own codes (``item_codes``, by default the ones this index holds) and compare with
        numpy's exact scores; raise if they differ."""
        if self.retrieval is None:
            return
        if item_codes is None:
            item_codes = self.item_codes
        if item_codes is None:
            raise ValueError("this index holds no item codes: pass the ones to check against")
        rows = np.unique(np.linspace(0, self.n_items - 1, num=min(samples, self.n_items)).astype(np.int64))
        k = min(k, self.n_items)
        if self.layout.is_binary:
            stored = item_search_form(item_codes[rows], self.layout, self.dim, self.user_layout)
            own = self.retrieval.search(stored, k).distances[:, 0]
            if np.any(own != 0):
                raise IndexSelfCheckError(
                    f"an item's own code was not found at Hamming distance 0 (got {own.tolist()})"
                )
        queries = as_query(np.asarray(item_codes[rows]), self.layout, self.dim, self.user_layout)
        exact = exact_scores(queries, item_codes, self.layout, self.dim, self.user_layout)
        expected = np.sort(exact, axis=1)[:, ::-1][:, :k]
        _, got = self._search(self.prepare_queries(queries), k)
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-3):
            raise IndexSelfCheckError("index scores disagree with exact scoring of the same codes")

    def _search(self, queries: npt.NDArray[Any], fetch: int) -> Fetched:
        """The backend's first ``fetch`` items per query (score desc, id asc) and their exact scores."""
        if self.retrieval is None or fetch == 0:
            return self._nothing_fetched(queries, fetch)
        return self._scored(self.retrieval.search(queries, fetch))

    async def _search_async(self, queries: npt.NDArray[Any], fetch: int) -> Fetched:
        if self.retrieval is None or fetch == 0:
            return self._nothing_fetched(queries, fetch)
        return self._scored(await self.retrieval.search_async(queries, fetch))

    @staticmethod
    def _nothing_fetched(queries: npt.NDArray[Any], fetch: int) -> Fetched:
        shape = (queries.shape[0], fetch)
        return np.full(shape, -1, np.int64), np.full(shape, -np.inf, np.float32)

    def _scored(self, found: TopK) -> Fetched:
        return found.ids, scores_from_distances(found.distances, self.layout, self.dim, self.user_layout)

    def prepare_queries(self, query_codes: npt.NDArray[Any]) -> npt.NDArray[Any]:
        width = code_width(self.user_layout, self.dim)
        if query_codes.ndim != 2 or query_codes.shape[1] != width:
            raise ValueError(f"query codes must be [n, {width}], got {query_codes.shape}")
        return query_search_form(query_codes, self.user_layout, self.dim, self.layout)

    def warm(self, max_batch: int, max_fetch: int = WARM_MAX_FETCH) -> int:
        """On a GPU, search once at every batch and fetch shape serving will ask for (``warm_shapes``): up to
        ``max_batch`` queries and ``max_fetch`` results (k plus the seen items a query skips; at most the backend's
        fast path), k = 1 included. The kernels compile and the CUDA graphs are captured here, not inside the first
        requests of each shape. Returns the searches made (none on a CPU, where there is nothing to capture)."""
        if max_batch < 1 or not self.on_gpu or self.n_items == 0:
            return 0
        queries = self.prepare_queries(self.warm_queries(max_batch))
        # Past the fast path (FAISS GPU's k of 2,048) a search runs on the host, where nothing is captured: warming it
        # would only scan the catalogue on the CPU while the server starts.
        batches, fetches = warm_shapes(max_batch, min(max_fetch, MAX_K, self._fast_k), self.n_items)
        for batch in batches:
            for fetch in fetches:
                self._search(queries[:batch], fetch)
        return len(batches) * len(fetches)

    def warm_queries(self, count: int) -> npt.NDArray[Any]:
        """``count`` query codes for ``warm``: this index's items, spread over the catalogue, coded as queries, so
        that warm-up searches meet the distances real queries meet. An all-zero code can tie with every item of one
        popcount and overflow the key buffers of every warm-up search into a redo over the whole catalogue. Zeros
        only where the index holds no item codes (it searches another process's backend or a stored index alone)."""
        if self.item_codes is None or self.n_items == 0:
            return np.zeros((count, code_width(self.user_layout, self.dim)), dtype=code_dtype(self.user_layout))
        rows = np.linspace(0, self.n_items - 1, num=count).astype(np.int64)
        return as_query(np.asarray(self.item_codes[rows]), self.layout, self.dim, self.user_layout)

    @property
    def waits_on_peer(self) -> bool:
        """Whether the backend answers from another process: then ``search_async`` searches on the event loop."""
        return self.retrieval is not None and self.retrieval.waits_on_peer

    def search(
        self,
        query_codes: npt.NDArray[Any],
        k: int,
        *,
        exclude: list[npt.NDArray[np.int64]] | None = None,
        query_scales: npt.NDArray[np.floating] | None = None,
    ) -> SearchResult:
        """Top-``k`` items per query, skipping each query's ``exclude`` items; ties by item id.

        Exact for codes without item scales; with them, Hamming candidates are re-ranked exactly.
        """
        steps = self._steps(query_codes, k, exclude, query_scales)
        try:
            fetch = next(steps)
            while True:
                fetch = steps.send(self._search(*fetch))
        except StopIteration as done:
            result: SearchResult = done.value
            return result

    async def search_async(
        self,
        query_codes: npt.NDArray[Any],
        k: int,
        *,
        exclude: list[npt.NDArray[np.int64]] | None = None,
        query_scales: npt.NDArray[np.floating] | None = None,
    ) -> SearchResult:
        """``search`` awaiting the backend on the event loop: for an index whose backend ``waits_on_peer``."""
        steps = self._steps(query_codes, k, exclude, query_scales)
        try:
            fetch = next(steps)
            while True:
                fetch = steps.send(await self._search_async(*fetch))
        except StopIteration as done:
            result: SearchResult = done.value
            return result

    def _steps(
        self,
        query_codes: npt.NDArray[Any],
        k: int,
        exclude: list[npt.NDArray[np.int64]] | None,
        query_scales: npt.NDArray[np.floating] | None,
    ) -> Steps:
        """A search as the fetches it needs: yields (queries, fetch), is sent their ``Fetched``, returns the result.
        ``search`` and ``search_async`` differ only in how they wait for the backend."""
        check_search_arguments(query_codes, k, exclude)
        queries = self.prepare_queries(query_codes)
        if self.rerank is not None:
            return (yield from self._reranked_steps(queries, query_codes, query_scales, k, exclude))
        n_queries = queries.shape[0]
        out_ids = np.full((n_queries, k), -1, dtype=np.int64)
        out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        n_excluded = np.array([len(e) for e in exclude] if exclude is not None else [0] * n_queries, dtype=np.int64)
        fetch_per_query = np.minimum(k + n_excluded, self.n_items)
        pending = np.arange(n_queries)
        while pending.size and self.n_items:
            unresolved = []
            for group in self._fetch_groups(pending, fetch_per_query[pending]):
                fetch = int(fetch_per_query[group].max())
                ids, scores = yield queries[group], fetch
                for row, query in enumerate(group):
                    done = self._finish_row(
                        ids[row],
                        scores[row],
                        exclude[query] if exclude is not None else None,
                        k,
                        complete=fetch >= self.n_items,
                        out_ids=out_ids[query],
                        out_scores=out_scores[query],
                    )
                    if not done:
                        unresolved.append(query)
            pending = np.asarray(unresolved, dtype=np.int64)
            fetch_per_query[pending] = np.minimum(fetch_per_query[pending] * 2, self.n_items)
        return SearchResult(ids=out_ids, scores=out_scores)

    def _reranked_steps(
        self,
        queries: npt.NDArray[Any],
        query_codes: npt.NDArray[Any],
        query_scales: npt.NDArray[np.floating] | None,
        k: int,
        exclude: list[npt.NDArray[np.int64]] | None,
    ) -> Steps:
        assert self.rerank is not None
        n_queries = queries.shape[0]
        n_excluded = np.array([len(e) for e in exclude] if exclude is not None else [0] * n_queries, dtype=np.int64)
        fetches = np.minimum(self.n_items, k * self.rerank.factor + n_excluded)
        # Each query's own fetch of Hamming candidates, whichever queries it was searched with: its answer does not
        # depend on its neighbours'.
        candidates: list[npt.NDArray[np.int64]] = [np.empty(0, np.int64)] * n_queries
        for group in self._fetch_groups(np.arange(n_queries), fetches):
            found, _ = yield queries[group], int(fetches[group].max())
            for query, ids in zip(group, found, strict=True):
                candidates[query] = ids[: fetches[query]]
        users = dequantize(query_codes, self.layout, self.dim, query_scales, self.rerank.mode)
        out_ids = np.full((n_queries, k), -1, dtype=np.int64)
        out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        for row in range(n_queries):
            ids = np.union1d(candidates[row][candidates[row] >= 0], self.rerank.heavy)
            if exclude is not None and exclude[row].size:
                ids = ids[~np.isin(ids, exclude[row])]
            scores = self.rerank.item_vectors(ids, self.layout, self.dim) @ users[row]
            order = np.lexsort((ids, -scores))[:k]
            out_ids[row, : order.size] = ids[order]
            out_scores[row, : order.size] = scores[order]
        return SearchResult(ids=out_ids, scores=out_scores)

    def _fetch_groups(
        self, queries: npt.NDArray[np.int64], fetches: npt.NDArray[np.int64]
    ) -> list[npt.NDArray[np.int64]]:
        """``queries`` in the groups one backend call each searches (``fetch_groups``)."""
        return [queries[group] for group in fetch_groups(fetches, self._fast_k)]

    @property
    def _fast_k(self) -> int:
        """The largest fetch the backend answers on its fast path (``SearchBackend.fast_k``)."""
        return self.retrieval.fast_k if self.retrieval is not None else self.n_items

    @staticmethod
    def _finish_row(
        ids: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        excluded: npt.NDArray[np.int64] | None,
        k: int,
        *,
        complete: bool,
        out_ids: npt.NDArray[np.int64],
        out_scores: npt.NDArray[np.float32],
    ) -> bool:
        """Fill one query's answer from its fetched items (in exact order) if k remain after filtering or
        every item was fetched; else ask for more."""
        valid = ids >= 0
        ids, scores = ids[valid], scores[valid]
        if excluded is not None and excluded.size:
            ordered = np.sort(excluded)  # a user's seen items: tens to hundreds, sorted in microseconds
            at = np.minimum(np.searchsorted(ordered, ids), ordered.size - 1)
            keep = ordered[at] != ids
            ids, scores = ids[keep], scores[keep]
        ids, scores = ids[:k], scores[:k]
        if not complete and ids.size < k:
            return False
        out_ids[: ids.size] = ids
        out_scores[: ids.size] = scores
        return True
