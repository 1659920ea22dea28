"""GET /recommend: Top-K items for one user; POST /recommend: for up to ``max_batch_users`` users.

No `from __future__ import annotations` here: FastAPI must evaluate the `Query` bounds, which close over
the settings given to `build_router`.
"""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.deps import RecommenderDep
from service.schemas import BatchRecommendation, Recommendation
from service.settings import ServiceSettings

USER_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # any printable id, spaces included (CSV ids may hold them)


def build_router(settings: ServiceSettings) -> APIRouter:
    """Routes whose validation bounds come from settings (``k`` ≤ ``max_k``)."""
    router = APIRouter(tags=["recommend"])

    @router.get(
        "/recommend",
        response_model=Recommendation,
        summary="Top-K items for a user",
        responses={422: {"description": "a query parameter is missing or out of range; the body names it"}},
    )
    async def recommend(
        recommender: RecommenderDep,
        user_id: Annotated[
            str,
            Query(
                min_length=1,
                max_length=256,
                pattern=USER_ID_PATTERN,
                description="external user id; unknown users get the popularity fallback",
            ),
        ],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="number of items")] = settings.default_k,
        exclude_seen: Annotated[bool, Query(description="leave out items the user was trained on")] = True,
    ) -> Response:
        answer = await recommender.recommend(user_id, k, exclude_seen=exclude_seen)
        # Built by our own code from our own models: serialise directly, no second validation pass.
        return Response(answer.model_dump_json(), media_type="application/json")

    class RecommendBatch(BaseModel):
        """Several users in one call: one Redis round trip, their searches batched together."""

        model_config = ConfigDict(extra="forbid")
        user_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=USER_ID_PATTERN)]] = (
            Field(
                min_length=1,
                max_length=settings.max_batch_users,
                description=f"external user ids (1 to {settings.max_batch_users}); unknown ones get popular items",
            )
        )
        k: int = Field(settings.default_k, ge=1, le=settings.max_k, description="number of items per user")
        exclude_seen: bool = Field(True, description="leave out items each user was trained on (or gave in histories)")
        histories: dict[
            Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=USER_ID_PATTERN)],
            list[Annotated[str, StringConstraints(min_length=1, max_length=256)]],
        ] = Field(
            default_factory=dict,
            max_length=settings.max_batch_users,
            description="cold start: for users the model does not know, the ids of items they interacted with; "
            "their codes are derived from these items (source 'history') instead of the popularity fallback",
        )

    @router.post(
        "/recommend",
        response_model=BatchRecommendation,
        summary="Top-K items for several users",
        responses={422: {"description": "the body is not JSON, or a field is missing or out of range; it is named"}},
    )
    async def recommend_batch(recommender: RecommenderDep, body: RecommendBatch) -> Response:
        results = await recommender.recommend_many(
            body.user_ids, body.k, exclude_seen=body.exclude_seen, histories=body.histories
        )
        return Response(BatchRecommendation(results=results).model_dump_json(), media_type="application/json")

    return router
