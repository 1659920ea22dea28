"""GET /recommend: Top-K items for one user; POST /recommend: for up to ``max_batch_users`` users.

No `from __future__ import annotations` here: FastAPI must evaluate the `Query` bounds, which close over
the settings given to `build_router`.
"""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from service.deps import RecommenderDep
from service.routing import ServiceRoute
from service.schemas import Answer, BatchRecommendation, Recommendation, answers_json_yielding
from service.settings import ServiceSettings

USER_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # any printable id, spaces included (CSV ids may hold them)


def integral(value: object) -> object:
    """20.0 is the integer 20 in JSON (and in the OpenAPI schema's ``integer``); 20.5, "20" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_router(settings: ServiceSettings) -> APIRouter:
    """Routes whose validation bounds come from settings (``k`` ≤ ``max_k``)."""
    router = APIRouter(tags=["recommend"], route_class=ServiceRoute)

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
        exclude_seen: Annotated[
            bool, Query(description="leave out items the user was trained on or posted as recent events")
        ] = True,
    ) -> Response:
        answer = await recommender.recommend(user_id, k, exclude_seen=exclude_seen)
        return await json_response([answer], batch=False)

    class RecommendBatch(BaseModel):
        """Several users in one call: one Redis round trip, their searches batched together.

        Strict: JSON types are taken as they are (``"20"`` or ``true`` is no ``k``, ``0`` no ``exclude_seen``).
        """

        model_config = ConfigDict(extra="forbid", strict=True)
        user_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=USER_ID_PATTERN)]] = (
            Field(
                min_length=1,
                max_length=settings.max_batch_users,
                description=f"external user ids (1 to {settings.max_batch_users}); unknown ones get popular items; "
                f"users × k may not pass {settings.max_request_items} (a 422 on k)",
            )
        )
        k: Annotated[int, BeforeValidator(integral)] = Field(
            settings.default_k,
            ge=1,
            le=settings.max_k,
            description=f"number of items per user; users × k may not pass {settings.max_request_items} (a 422 on "
            "k, however valid each field is alone)",
        )
        exclude_seen: bool = Field(
            True, description="leave out items each user was trained on, posted as recent events or gave in histories"
        )
        histories: dict[
            Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=USER_ID_PATTERN)],
            Annotated[
                list[Annotated[str, StringConstraints(min_length=1, max_length=256)]],
                Field(max_length=settings.max_history_items),
            ],
        ] = Field(
            default_factory=dict,
            max_length=settings.max_batch_users,
            description="cold start: for users the model does not know, the ids of items they interacted with; "
            "their codes are derived from these items (source 'history') instead of the popularity fallback",
            json_schema_extra={"additionalProperties": False},  # keys must match the user id pattern
        )

        @field_validator("k")
        @classmethod
        def within_item_budget(cls, k: int, info: ValidationInfo) -> int:
            users = len(info.data.get("user_ids", ()))
            if users * k > settings.max_request_items:
                raise PydanticCustomError(OVER_BUDGET, OVER_BUDGET_MESSAGE, over_budget(users, k, settings))
            return k

    @router.post(
        "/recommend",
        response_model=BatchRecommendation,
        summary="Top-K items for several users",
        responses={
            413: {"description": "the body is over the size limit (RECSYS_MAX_REQUEST_BYTES)"},
            422: {
                "description": "the body is not JSON, or a field is missing, of another type or out of range; it is "
                "named. Also users × k over RECSYS_MAX_REQUEST_ITEMS, a limit spanning two fields that the schema "
                "cannot state: a 422 on k (the example)",
                **over_budget_example(settings),
            },
        },
    )
    async def recommend_batch(recommender: RecommenderDep, body: RecommendBatch) -> Response:
        results = await recommender.recommend_many(
            body.user_ids, body.k, exclude_seen=body.exclude_seen, histories=body.histories
        )
        return await json_response(results, batch=True)

    return router


OVER_BUDGET = "request_too_large"
OVER_BUDGET_MESSAGE = "{users} users × k = {k} asks for {total} items, over the limit of {limit} per request"


def over_budget(users: int, k: int, settings: ServiceSettings) -> dict[str, int]:
    return {"users": users, "k": k, "total": users * k, "limit": settings.max_request_items}


def over_budget_example(settings: ServiceSettings) -> dict[str, object]:
    """The 422 response's documented example: what the server answers the most users at the smallest k over the
    budget (none where the limits leave no such request)."""
    users = settings.max_batch_users
    k = settings.max_request_items // users + 1
    if k > settings.max_k:
        return {}
    context = over_budget(users, k, settings)
    error = {"type": OVER_BUDGET, "loc": ["body", "k"], "msg": OVER_BUDGET_MESSAGE.format(**context), "input": k,
             "ctx": context}  # fmt: skip
    return {"content": {"application/json": {"example": {"detail": [error]}}}}


async def json_response(answers: list[Answer], *, batch: bool) -> Response:
    """Our own answers, written as the documented JSON without a validation pass."""
    body = await answers_json_yielding(answers, batch=batch)
    return Response(body, media_type="application/json", headers={"X-Model-Version": answers[0].model_version})
