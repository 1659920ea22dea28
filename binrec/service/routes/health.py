"""Liveness and readiness, as used by the compose healthcheck and load balancers."""

from __future__ import annotations

from fastapi import APIRouter

from binrec.service.deps import RecommenderDep
from binrec.service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", summary="A model is loaded; Redis reachable ('ready') or not ('degraded')")
async def readyz(recommender: RecommenderDep) -> Readiness:
    model = recommender.model
    redis_ok = await recommender.codes.ping()
    return Readiness(
        status="ready" if redis_ok else "degraded",
        model_version=model.version,
        redis=redis_ok,
        index_device="gpu" if model.index.on_gpu else "cpu",
        search_backend=model.index.backend,
    )
