"""The FastAPI application factory: heavy resources are created in the lifespan, kept on app.state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import metadata
from typing import NoReturn

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from uvicorn.config import STARTUP_FAILURE

from index.command_line import first_line
from index.retrieval.faiss_backend import set_cpu_threads
from service.activity import UserActivity
from service.batcher import MicroBatcher
from service.errors import http_error, search_unavailable, validation_error
from service.event_store import EventStore
from service.hot_path import RecommendHotPath
from service.limits import LimitRequestBody
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.model import SWITCH_INTERVAL_S, ModelLoader, ModelLoadError, ServingModel
from service.observe import ObserveRequests
from service.recommender import Recommender
from service.routes import admin, events, health, recommend
from service.routing import HeadAsGet
from service.search_client import RemoteBackend, SearchUnavailable
from service.settings import ServiceSettings, get_settings
from service.user_codes import UserCodeCache
from service.workers import WorkerVersions, record_start_failure

log = logging.getLogger(__name__)
access = logging.getLogger("service.access")


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug must still answer JSON, never a traceback; the details go to the log."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def stop_worker(what: str, error: BaseException) -> NoReturn:
    """A worker of several that cannot start says why in one line, leaves the reason for `recsys-serve`, and exits
    with uvicorn's startup-failure code, which stops the server. Any other exit (a traceback) and uvicorn starts the
    worker again, forever: the server would never turn ready and never say why."""
    reason = f"worker {os.getpid()} {what}: {first_line(error)}"
    log.error("%s", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    record_start_failure(reason)
    os._exit(STARTUP_FAILURE)


def load_or_exit(loader: ModelLoader, *, workers: int) -> ServingModel:
    """The worker's model. A worker of several that cannot load it (its search process gone, the bundle refused since
    the server verified it) stops the server (``stop_worker``): a lifespan error would log a traceback instead."""
    try:
        return loader.load()
    except ModelLoadError as error:
        if workers == 1:
            raise
        stop_worker("could not load its model, stopping", error)


def user_activity(redis: Redis, settings: ServiceSettings, metrics: ServiceMetrics) -> UserActivity | None:
    """Users' recent events, when POST /events is enabled (its key set)."""
    if settings.events_api_key is None:
        return None
    store = EventStore(
        redis,
        recent_items=settings.events_recent_items,
        ttl_s=settings.events_ttl_s,
        remembered_ids=settings.events_remembered_ids,
    )
    return UserActivity(
        store,
        on_event=lambda status, count: metrics.events.labels(outcome=status).inc(count),
        on_error=metrics.redis_errors.inc,
    )


def package_version(distribution: str = "binrec") -> str:
    """The installed package's version (pyproject.toml's); "unknown" where the code runs from a source tree on
    PYTHONPATH without being installed, which must serve all the same."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def create_worker_app() -> FastAPI:
    """The app of one worker of `recsys-serve --workers N` (uvicorn's factory), built from the environment. Whatever
    stops it from being built stops the server in one line (``stop_worker``), where uvicorn would restart it."""
    try:
        return create_app()
    except Exception as error:  # every cause: each would restart the worker forever
        stop_worker("could not build its app, stopping", error)


def create_app(settings: ServiceSettings | None = None, *, model: ServingModel | None = None) -> FastAPI:
    """Build the app; ``model`` may be pre-loaded (the CLI verifies the bundle before binding a port)."""
    settings = settings or get_settings()
    if settings.workers > 1:  # a worker process of `recsys-serve --workers N`: nobody configured its logging
        configure_logging(settings.log_level, settings.log_format)
    metrics = ServiceMetrics()
    loader = ModelLoader.for_worker(settings, observe_search=metrics.observe_owner_search)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The event loop shares the GIL with the index's search thread and with model loads; the interpreter's
        # default slice would let either hold the loop's requests for 5 ms each time the loop wants the GIL back.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        serving = model or load_or_exit(loader, workers=settings.workers)
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            max_connections=settings.redis_max_connections,
        )
        codes = UserCodeCache(
            redis,
            ttl_s=settings.user_code_ttl_s,
            lru_size=settings.user_code_lru_size,
            on_lookup=lambda source, count: metrics.user_code_lookups.labels(source=source).inc(count),
            on_error=metrics.redis_errors.inc,
        )
        batcher = MicroBatcher(
            max_batch=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            on_batch=metrics.observe_batch,
            thread_setup=partial(set_cpu_threads, settings.search_threads),  # OpenMP's count is per thread
            in_flight=settings.search_in_flight if settings.search_socket is not None else 1,
        )
        batcher.start()
        versions = WorkerVersions.from_environment()
        recommender = Recommender(
            serving,
            codes,
            batcher,
            metrics,
            loader=loader,
            versions=versions,
            activity=user_activity(redis, settings, metrics),
        )
        watcher = None
        if settings.watch_interval_s > 0:
            watcher = asyncio.create_task(recommender.watch(settings.bundle_root, settings.watch_interval_s))
        app.state.settings = settings
        app.state.recommender = recommender
        metrics.workers.set(1)  # counted once its model is loaded: a worker still loading would read CURRENT anew
        try:
            yield
        finally:  # uvicorn has stopped accepting and finished in-flight requests by now
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await batcher.close()
            retrieval = recommender.model.index.retrieval
            if isinstance(retrieval, RemoteBackend):  # its connections belong to this loop: closed before it ends
                retrieval.close()
            await redis.aclose()
            if versions is not None:
                versions.retire()
            metrics.retire()

    app = FastAPI(
        title="binrec",
        summary="Top-K recommendations from binary / 2-bit GNN codes by exact Hamming search",
        version=package_version(),
        lifespan=lifespan,
    )
    app.state.metrics = metrics

    app.add_middleware(HeadAsGet)  # innermost: the others see the request's own method
    if settings.hot_path:  # within them: metrics, request ids and body limits apply to it as to every route
        app.add_middleware(RecommendHotPath, settings=settings)
    app.add_middleware(LimitRequestBody, max_bytes=settings.max_request_bytes)
    app.add_middleware(ObserveRequests, metrics=metrics)  # added last, so outermost: it sees the 413s too
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(SearchUnavailable, search_unavailable)
    app.include_router(health.router)
    app.include_router(recommend.build_router(settings))
    app.include_router(events.build_router(settings))
    app.include_router(admin.router)
    return app
