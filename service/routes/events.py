"""POST /events: what users just did, recorded in Redis and reaching their next /recommend on every replica.

No `from __future__ import annotations` here: FastAPI must evaluate the body model's bounds, which close over the
settings given to `build_router`.
"""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.activity import UserEvent
from service.deps import RecommenderDep, check_api_key
from service.routes.recommend import USER_ID_PATTERN
from service.routing import checked_first
from service.schemas import EventResult, EventsRecorded
from service.settings import ServiceSettings
from service.user_codes import REDIS_FAILURES

# Seconds since the epoch up to the year 5138: a larger number is most likely milliseconds, refused rather than
# taken as an event far in the future (which would stay the user's most recent for as long as it lives).
MAX_TIMESTAMP = 1e11

UNAVAILABLE = "Redis did not answer, the events may not be recorded: retry (an event_id is never recorded twice)"


def events_key_first(request: Request) -> None:
    """The endpoint's key, checked before the body is read (``checked_first``): a client without it learns nothing
    of the API, not even that its body is no JSON."""
    settings: ServiceSettings = request.app.state.settings
    check_api_key(settings.events_api_key, request.headers.get("x-api-key"), endpoint="events",
                  variable="RECSYS_EVENTS_API_KEY")  # fmt: skip


async def events_key(x_api_key: Annotated[str | None, Header(description="the events API key")] = None) -> None:
    """The key's header as the OpenAPI schema documents it; ``events_key_first`` has checked it already, before
    FastAPI read the body (a dependency runs after)."""


def build_router(settings: ServiceSettings) -> APIRouter:
    """Routes whose validation bounds come from settings (events per request ≤ ``events_max_batch``)."""
    router = APIRouter(tags=["events"], route_class=checked_first(events_key_first))

    class Event(BaseModel):
        """Strict: JSON types are taken as they are (``"17"`` is no timestamp, ``17`` no item id)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        user_id: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=USER_ID_PATTERN)] = Field(
            description="external user id; a user the model never saw is coded from their events alone"
        )
        item_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
            description="external item id; one the model does not know is reported ('unknown_item'), not recorded"
        )
        timestamp: float | None = Field(
            None,
            ge=0,
            le=MAX_TIMESTAMP,
            allow_inf_nan=False,
            description="when it happened, in seconds since the epoch (orders the recent items); default: when the "
            "service receives it",
        )
        event_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
            None,
            description="the client's id of the event: an event whose id was recorded for the user already is a "
            "'duplicate' and changes nothing, so a retried batch is safe",
        )

    class EventBatch(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        events: list[Event] = Field(
            min_length=1,
            max_length=settings.events_max_batch,
            description=f"1 to {settings.events_max_batch} events, of any users",
        )

    @router.post(
        "/events",
        summary="Record what users just did; their next /recommend, on any replica, takes it in",
        dependencies=[Depends(events_key)],
        responses={
            401: {"description": "missing or wrong X-API-Key"},
            403: {"description": "the endpoint is disabled (RECSYS_EVENTS_API_KEY is not set)"},
            413: {"description": "the body is over the size limit (RECSYS_MAX_REQUEST_BYTES)"},
            422: {"description": "the body is not JSON, or a field is missing, of another type or out of range; "
                  "it is named"},
            503: {"description": "Redis is down or did not answer in time: retry (Retry-After); a retried event_id is "
                  "recorded once"},
        },
    )  # fmt: skip
    async def post_events(recommender: RecommenderDep, body: EventBatch) -> EventsRecorded:
        activity = recommender.activity
        assert activity is not None  # the key is set (checked above), so the app made it
        model = recommender.model
        events = [UserEvent(e.user_id, e.item_id, e.timestamp, e.event_id) for e in body.events]
        try:
            statuses = await activity.record(model, events, now=time.time())
        except REDIS_FAILURES as error:
            activity.on_error()
            raise HTTPException(503, UNAVAILABLE, headers={"Retry-After": "1"}) from error
        return EventsRecorded(
            model_version=model.version,
            recoded=model.cold_start is not None,
            accepted=statuses.count("accepted"),
            duplicates=statuses.count("duplicate"),
            unknown_items=statuses.count("unknown_item"),
            results=[EventResult(status=status) for status in statuses],
        )

    return router
