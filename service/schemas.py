"""Response bodies of the API (request parameters are declared on the routes)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

Source = Literal["codes", "history", "events", "popular"]
EventStatus = Literal["accepted", "duplicate", "unknown_item"]


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id, as in the training data")
    score: float | None = Field(
        description="exact inner product of the dequantized codes (higher is better); null for popularity fallback"
    )


class Recommendation(BaseModel):
    user_id: str
    model_version: str = Field(description="bundle that produced the answer")
    source: Source = Field(
        description="'codes': ranked by the user's code; 'history': an unknown user coded from the items given "
        "in the request (cold start); 'events': coded from the user's recent events (POST /events) with their "
        "trained history; 'popular': the user is unknown to the model and no usable history was given"
    )
    items: list[RecommendedItem]


class BatchRecommendation(BaseModel):
    results: list[Recommendation] = Field(description="one answer per requested user, in request order")


@dataclass(frozen=True, slots=True)
class Answer:
    """One user's answer as the recommender builds it, written straight to ``Recommendation``'s JSON.

    Our own ids and scores need no validation, and a pydantic object per item costs several times what writing
    the item as plain JSON does: on the event loop, for the largest requests, that cost was what starved the rest.
    """

    user_id: str
    model_version: str
    source: Source
    item_ids: list[str]
    scores: list[float] | None  # None: the popularity fallback, which has no scores

    def to_dict(self) -> dict[str, Any]:
        scores = self.scores if self.scores is not None else [None] * len(self.item_ids)
        items = [{"item_id": i, "score": s} for i, s in zip(self.item_ids, scores, strict=True)]
        return {"user_id": self.user_id, "model_version": self.model_version, "source": self.source, "items": items}


def answer_json(answer: Answer) -> str:
    """One ``Recommendation``, compact."""
    return json.dumps(answer.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def answers_json(answers: list[Answer], *, batch: bool) -> bytes:
    """The body of GET (one ``Recommendation``) or POST (``BatchRecommendation``) /recommend, compact UTF-8."""
    if not batch:
        return answer_json(answers[0]).encode()
    return ('{"results":[' + ",".join(map(answer_json, answers)) + "]}").encode()


# Answers written between two turns of the event loop: a few milliseconds of JSON, whatever the request's size.
ANSWERS_PER_TURN = 8


async def answers_json_yielding(answers: list[Answer], *, batch: bool) -> bytes:
    """``answers_json``, letting the event loop run the worker's other requests every ``ANSWERS_PER_TURN`` answers.

    Writing a float takes about a microsecond and the largest requests hold tens of thousands: in one call (which no
    thread can share, since the encoder holds the GIL throughout) that was a stall of tens of milliseconds for every
    other request of the worker."""
    if not batch or len(answers) <= ANSWERS_PER_TURN:
        return answers_json(answers, batch=batch)
    parts: list[str] = []
    for start in range(0, len(answers), ANSWERS_PER_TURN):
        parts.extend(map(answer_json, answers[start : start + ANSWERS_PER_TURN]))
        await asyncio.sleep(0)
    return ('{"results":[' + ",".join(parts) + "]}").encode()


class EventResult(BaseModel):
    status: EventStatus = Field(
        description="'accepted': recorded; 'duplicate': an event with this event_id was recorded for the user "
        "already, nothing changed; 'unknown_item': the model does not know the item, not recorded"
    )


class EventsRecorded(BaseModel):
    model_version: str = Field(description="the model that checked the items and coded the users")
    recoded: bool = Field(
        description="the users' codes were derived afresh from their events; false when the bundle has no "
        "cold-start encoder (bigear, gnaq): the events are recorded and exclude their items, the codes stay the "
        "bundle's"
    )
    accepted: int
    duplicates: int
    unknown_items: int
    results: list[EventResult] = Field(description="one per event, in request order")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"] = Field(
        description="'degraded': serving, but Redis is unreachable and codes come from the bundle; 'unavailable' "
        "(HTTP 503): the search process does not answer, so searches fail"
    )
    model_version: str
    redis: bool
    index_device: Literal["cpu", "gpu"]
    search_backend: str = Field(description="the backend answering Hamming searches, e.g. 'triton' or 'faiss-cpu'")
    search: bool = Field(description="the index answers searches (false: its search process does not answer)")
