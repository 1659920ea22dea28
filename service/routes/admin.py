"""POST /admin/reload (load the bundle CURRENT names, behind an API key) and GET /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from service.deps import RecommenderDep, SettingsDep, check_api_key
from service.model import ModelLoadError
from service.routing import ServiceRoute

router = APIRouter(route_class=ServiceRoute)


class Reloaded(BaseModel):
    previous_version: str = Field(description="the version served before this call")
    model_version: str = Field(description="the version served now, by every worker")
    changed: bool
    workers: int = Field(description="worker processes serving model_version (all of the server's)")


@router.post(
    "/admin/reload",
    tags=["admin"],
    summary="Load, check and warm the bundle CURRENT names, then swap it in",
    responses={
        401: {"description": "missing or wrong X-API-Key"},
        403: {"description": "the endpoint is disabled (RECSYS_ADMIN_API_KEY is not set)"},
        409: {"description": "the bundle was refused (corrupt, half-written, wrong shapes); the old model serves on"},
        503: {
            "description": "the load failed for a reason that may pass (the search process unreachable, a device "
            "out of memory); the old model serves on"
        },
        504: {"description": "several workers: not all of them serve the new model after RECSYS_RELOAD_TIMEOUT_S"},
    },
)
async def reload(
    recommender: RecommenderDep,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="the admin API key")] = None,
) -> Reloaded:
    check_api_key(settings.admin_api_key, x_api_key, endpoint="admin", variable="RECSYS_ADMIN_API_KEY")
    try:
        previous, current = await recommender.reload(settings.bundle_root)
    except ModelLoadError as error:
        if error.refused:
            raise HTTPException(409, f"bundle refused, still serving {recommender.model.version}: {error}") from error
        raise HTTPException(
            503, f"bundle not loaded (may pass), still serving {recommender.model.version}: {error}",
            headers={"Retry-After": "1"},
        ) from error  # fmt: skip
    workers = 1
    if recommender.versions is not None:  # the others follow CURRENT with their watchers: acknowledge once they do
        serving = await recommender.versions.wait_for(current, settings.workers, settings.reload_timeout_s)
        behind = sorted({version for version in serving.values() if version != current})
        ready = sum(version == current for version in serving.values())
        if behind or ready < settings.workers:
            raise HTTPException(
                504, f"{ready} of {settings.workers} workers serve {current} after {settings.reload_timeout_s:g} s"
                f"{f'; others serve {behind}' if behind else ''}",
            )  # fmt: skip
        workers = len(serving)
    return Reloaded(previous_version=previous, model_version=current, changed=previous != current, workers=workers)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
