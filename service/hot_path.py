"""GET /recommend without FastAPI's per-request machinery, for requests whose parameters are plainly valid.

Most of the service's traffic is one request shape: ``GET /recommend?user_id=…&k=…&exclude_seen=…``. FastAPI answers
it through its router, dependency solving, a pydantic validation of each parameter and a ``Response`` object, which
together cost several times what ranking the user's items from the search process costs a worker. This middleware
answers that request itself when every parameter is one FastAPI would accept as it stands (a printable ``user_id``
of 1–256 characters, a plain decimal ``k`` within bounds, ``exclude_seen`` spelled ``true``/``false``/``1``/``0``),
with the same body and headers. Anything else (a missing, repeated or out-of-range parameter, another spelling, a
HEAD, a proxy's root path) goes on to the declared route, which validates it and writes the documented 422: the
OpenAPI contract and every error stay FastAPI's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import search_unavailable
from service.schemas import answers_json
from service.search_client import SearchUnavailable
from service.settings import ServiceSettings

USER_ID = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # the route's pattern and lengths, matched whole
PLAIN_K = re.compile(r"[1-9][0-9]{0,8}")
FLAGS = {"true": True, "false": False, "1": True, "0": False}  # spellings FastAPI reads as these booleans too


@dataclass(frozen=True)
class RouteLabel:
    """What ``ObserveRequests`` reads of the route that answered (``scope["route"]``): its path template."""

    path: str


ROUTE = RouteLabel("/recommend")


class RecommendHotPath:
    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self.default_k, self.max_k = settings.default_k, settings.max_k

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = (
            self.plain_parameters(scope["query_string"])
            if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/recommend"
            and not scope.get("root_path")
            else None
        )  # fmt: skip
        if plain is None:
            await self.app(scope, receive, send)
            return
        user_id, k, exclude_seen = plain
        scope["route"] = ROUTE
        try:
            answer = await scope["app"].state.recommender.recommend(user_id, k, exclude_seen=exclude_seen)
        except SearchUnavailable as error:
            await (await search_unavailable(Request(scope), error))(scope, receive, send)
            return
        body = answers_json([answer], batch=False)
        headers = [
            (b"x-model-version", answer.model_version.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def plain_parameters(self, query_string: bytes) -> tuple[str, int, bool] | None:
        """(user_id, k, exclude_seen) when each is given at most once and plainly valid; else None."""
        user_id: str | None = None
        k: int | None = None
        exclude_seen: bool | None = None
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):  # as Starlette reads it
            if name == "user_id":
                if user_id is not None or not USER_ID.fullmatch(value):
                    return None
                user_id = value
            elif name == "k":
                if k is not None or not PLAIN_K.fullmatch(value) or int(value) > self.max_k:
                    return None
                k = int(value)
            elif name == "exclude_seen":
                if exclude_seen is not None or value not in FLAGS:
                    return None
                exclude_seen = FLAGS[value]
        if user_id is None:
            return None
        return user_id, self.default_k if k is None else k, True if exclude_seen is None else exclude_seen
