"""Typed dependencies the routes take as parameters."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from service.recommender import Recommender
from service.settings import ServiceSettings


# async on purpose: FastAPI runs plain-def dependencies on a thread pool, a hop per request for nothing.
async def get_recommender(request: Request) -> Recommender:
    recommender: Recommender = request.app.state.recommender
    return recommender


async def get_app_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


def check_api_key(expected: SecretStr | None, given: str | None, *, endpoint: str, variable: str) -> None:
    """403 while the endpoint's key is unset, 401 unless ``given`` (the X-API-Key header) is it.

    Header values arrive as latin-1 text; compared as bytes, any byte a client sends is just a wrong key
    (compare_digest refuses non-ASCII str).
    """
    if expected is None:
        raise HTTPException(403, f"{endpoint} endpoint disabled: set {variable} to enable it")
    key = expected.get_secret_value().encode()
    if given is None or not hmac.compare_digest(given.encode("latin-1", errors="replace"), key):
        raise HTTPException(401, "missing or wrong X-API-Key header")


RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
SettingsDep = Annotated[ServiceSettings, Depends(get_app_settings)]
