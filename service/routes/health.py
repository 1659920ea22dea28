"""Liveness and readiness, as used by the compose healthcheck and load balancers."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import RecommenderDep, SettingsDep
from service.routing import ServiceRoute
from service.schemas import Health, Readiness
from service.search_client import RemoteBackend

router = APIRouter(tags=["health"], route_class=ServiceRoute)
PING_TIMEOUT_S = 1.0  # how long /readyz waits for the search process (at most the search timeout)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="A model is loaded; Redis reachable ('ready') or not ('degraded'); searches answered, or 503",
    responses={503: {"model": Readiness, "description": "the search process does not answer ('unavailable')"}},
)
async def readyz(recommender: RecommenderDep, settings: SettingsDep) -> Readiness | JSONResponse:
    model = recommender.model
    redis_ok = await recommender.codes.ping()
    backend = model.index.retrieval
    searching = True
    if isinstance(backend, RemoteBackend):  # a stopped or stuck search process answers nothing: not ready
        searching = await asyncio.to_thread(backend.answers, min(PING_TIMEOUT_S, settings.search_timeout_s))
    readiness = Readiness(
        status="unavailable" if not searching else "ready" if redis_ok else "degraded",
        model_version=model.version,
        redis=redis_ok,
        index_device="gpu" if model.index.on_gpu else "cpu",
        search_backend=model.index.backend,
        search=searching,
    )
    if not searching:
        return JSONResponse(status_code=503, content=readiness.model_dump(), headers={"Retry-After": "1"})
    return readiness
