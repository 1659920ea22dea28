"""Typed dependencies the routes take as parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.recommender import Recommender
from service.settings import ServiceSettings


def get_recommender(request: Request) -> Recommender:
    recommender: Recommender = request.app.state.recommender
    return recommender


def get_app_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
SettingsDep = Annotated[ServiceSettings, Depends(get_app_settings)]
