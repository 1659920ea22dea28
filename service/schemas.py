"""Response bodies of the API (request parameters are declared on the routes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id, as in the training data")
    score: float | None = Field(
        description="exact inner product of the dequantized codes (higher is better); null for popularity fallback"
    )


class Recommendation(BaseModel):
    user_id: str
    model_version: str = Field(description="bundle that produced the answer")
    source: Literal["codes", "history", "popular"] = Field(
        description="'codes': ranked by the user's code; 'history': an unknown user coded from the items given "
        "in the request (cold start); 'popular': the user is unknown to the model and no usable history was given"
    )
    items: list[RecommendedItem]


class BatchRecommendation(BaseModel):
    results: list[Recommendation] = Field(description="one answer per requested user, in request order")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(
        description="'degraded': serving, but Redis is unreachable and codes come from the bundle"
    )
    model_version: str
    redis: bool
    index_device: Literal["cpu", "gpu"]
    search_backend: str = Field(description="the backend answering Hamming searches, e.g. 'triton' or 'faiss-cpu'")
