"""The serving model (a verified bundle and its item index) and how the service loads one.

Four places load a model: ``recsys-serve`` before it binds a port, each worker as it starts, a reload (the admin
endpoint or the watcher), and the search process (the index its workers search). All of them read the settings
through ``ModelLoader``, and a load that fails, whatever the reason, raises ``ModelLoadError`` with one line saying
why: ``recsys-serve`` exits with code 2, a reload answers 409 and the old model serves on, the search process
answers ``Refused`` (the bundle is at fault) or ``Failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from index.bundle import Bundle, BundleError
from index.item_index import DevicePreference, IndexSelfCheckError, ItemIndex, Reranker, warm_reach
from index.out_of_memory import out_of_memory
from index.retrieval import BackendName
from service.cold_start import ColdStart
from service.search_client import OPEN_TIMEOUT_S, RemoteBackend, SearchObserver
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

# A thread loading a bundle holds the GIL in slices; with the interpreter's default 5 ms slice, each time a serving
# loop (a worker's event loop, the search process's) wants the GIL back would be a 5 ms stall of its requests.
SWITCH_INTERVAL_S = 0.0005

# Failures of the bundle itself: corrupt or half-written files, wrong shapes, an index that answers wrongly, a bundle
# the search process refused (a ValueError in the worker). Loading it again fails again; any other failure (a device
# out of memory, the search process unreachable) may pass.
REFUSED: tuple[type[Exception], ...] = (BundleError, IndexSelfCheckError, ValueError)


class ModelLoadError(Exception):
    """A model could not be loaded. The message is one line saying why, ``refused`` says whether the bundle is at
    fault (``REFUSED``), and the error that stopped the load is the ``__cause__``."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused

    @classmethod
    def of(cls, error: Exception) -> ModelLoadError:
        return cls(describe(error), refused=isinstance(error, REFUSED))


def describe(error: BaseException) -> str:
    """One line for a failure: its message, and its type where the message alone does not say what happened."""
    if isinstance(error, BundleError | ValueError | ModelLoadError) and str(error):
        return str(error)
    if (allocation := out_of_memory(error)) is not None:
        return f"out of memory ({allocation})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@contextmanager
def load_failures() -> Iterator[None]:
    """Whatever fails inside, raised as a ``ModelLoadError``: a model that cannot serve is refused in one line,
    whatever the reason."""
    try:
        yield
    except Exception as error:
        raise ModelLoadError.of(error) from error


def loading(index: ItemIndex) -> AbstractContextManager[None]:
    """The searches of a model being loaded wait for the search process as long as opening the bundle there may
    (``RemoteBackend.waiting``); an index of this process's own searches as it always does."""
    retrieval = index.retrieval
    return retrieval.waiting(OPEN_TIMEOUT_S) if isinstance(retrieval, RemoteBackend) else nullcontext()


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
        with loading(index):
            index.self_check(bundle.item_codes)  # one round trip: this worker and the search process agree
        return index


@dataclass(frozen=True, kw_only=True)
class ModelLoader:
    """How this process loads a model, as the service's settings say: where the bundles are, where the index runs
    and with which backend, for how large a batch it is warmed, and whether the search process holds it.

    Example::

        loader = ModelLoader.for_worker(settings)
        model = loader.load()  # the bundle CURRENT names, verified, self-checked and warmed; else ModelLoadError
    """

    bundle_root: Path
    device: DevicePreference = "auto"
    backend: BackendName = "auto"
    warm_batch: int = 1
    warm_max_fetch: int = 0  # 0: the bundle's (``warm_reach`` at ``warm_k``)
    warm_k: int = 20
    search_socket: Path | None = None
    search_timeout_s: float = 5.0
    observe_search: SearchObserver | None = None

    @classmethod
    def for_worker(cls, settings: ServiceSettings, *, observe_search: SearchObserver | None = None) -> ModelLoader:
        """A worker's: its index (or, with ``search_socket``, the search process's) warmed for the largest batch of
        its micro-batcher."""
        return cls(
            bundle_root=settings.bundle_root, device=settings.device, backend=settings.retrieval_backend,
            warm_batch=settings.batch_max_size, warm_max_fetch=settings.warm_max_fetch, warm_k=settings.default_k,
            search_socket=settings.search_socket,
            search_timeout_s=settings.search_timeout_s, observe_search=observe_search,
        )  # fmt: skip

    @classmethod
    def for_check(cls, settings: ServiceSettings) -> ModelLoader:
        """``recsys-serve``'s, before it binds: with one worker it serves this very model, warmed as a worker's;
        with several each loads and warms its own, and this one only verifies the bundle (its GPU index searches
        nothing more)."""
        loader = cls.for_worker(settings)
        return loader if settings.workers == 1 else replace(loader, warm_batch=0)

    @classmethod
    def for_search_process(cls, settings: ServiceSettings) -> ModelLoader:
        """The search process's: it holds the index itself, and one of its searches merges a micro-batch of each
        worker."""
        return replace(
            cls.for_worker(settings), warm_batch=settings.batch_max_size * settings.workers, search_socket=None
        )

    def load(self, root: Path | None = None) -> ServingModel:
        """The bundle at ``root`` (by default the one ``bundle_root`` names), verified, and its index loaded,
        self-checked and warmed: on a GPU at every batch shape up to ``warm_batch`` queries. With ``search_socket``
        the search process holds the index's backend (loaded, checked and warmed there) and searches through it
        answer within ``search_timeout_s`` or raise ``SearchUnavailable``. ``ModelLoadError`` if any of it fails."""
        with load_failures():
            bundle = Bundle.load(root if root is not None else self.bundle_root)  # which checks the cold-start section
            if self.search_socket is None:
                index = self._own_index(bundle)
            else:
                index = ServingModel.remote_index(
                    bundle, self.search_socket, self.search_timeout_s, self.observe_search
                )
            if bundle.manifest.n_users and index.n_items:  # warm-up: the first real request pays no first-call cost
                scales = bundle.user_scales[:1] if bundle.user_scales is not None else None
                with loading(index):
                    index.search(np.asarray(bundle.user_codes[:1]), min(10, index.n_items), query_scales=scales)
        log.info(
            "loaded model %s from %s (search backend %s)", bundle.manifest.model_version, bundle.path, index.backend
        )
        return ServingModel(bundle=bundle, index=index)

    def index(self, root: Path) -> ItemIndex:
        """The index of the bundle at ``root``, held in this process (the search process's): loaded, self-checked
        and warmed as ``load`` does it; ``ModelLoadError`` if not."""
        with load_failures():
            return self._own_index(Bundle.load(root))

    def _own_index(self, bundle: Bundle) -> ItemIndex:
        index = ItemIndex.for_bundle(bundle, device=self.device, backend=self.backend)
        if not (self.warm_batch and index.on_gpu):
            return index  # nothing to capture
        reach = self.warm_max_fetch or warm_reach(bundle, self.warm_k)
        if searches := index.warm(self.warm_batch, reach):
            log.info("warmed up %d search shapes: batches up to %d, fetches up to %d", searches, self.warm_batch, reach)
        return index
