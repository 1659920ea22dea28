"""Typed dependencies the routes take as parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.recommender import Recommender
from service.settings import ServiceSettings


# async on purpose: FastAPI runs plain-def dependencies on a thread pool, a hop per request for nothing.
async def get_recommender(request: Request) -> Recommender:
    recommender: Recommender = request.app.state.recommender
    return recommender


async def get_app_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
SettingsDep = Annotated[ServiceSettings, Depends(get_app_settings)]
