"""How every route reads its request: JSON bodies decoded within bounds, a key checked before the body, HEAD as GET.

FastAPI decodes a JSON body with ``json.loads`` before it solves any dependency, and answers every failure other
than a syntax error with a 400 that names nothing. Valid JSON can fail there: an integer of more than Python's
4,300 digits (the interpreter's bound on converting decimal text), an array nested past the recursion limit, or
bytes in no Unicode encoding. Here such an integer is decoded as an infinite number, which every numeric field
refuses by name (``k``: "Input should be a finite number"), and the other two are JSON decoding errors that say
what is wrong. Since the body is read before any dependency, an endpoint's API key is checked by its route class,
before the body is read: a client without the key learns nothing of what the body should be.

HEAD is answered as GET is (HTTP requires it of every GET resource; load balancers probe with it): uvicorn sends
the GET's head and leaves its body out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send


def int_or_infinite(text: str) -> int | float:
    """A JSON integer, or ±infinity where it has more digits than Python converts: out of every field's range."""
    try:
        return int(text)
    except ValueError:
        return -math.inf if text.startswith("-") else math.inf


def decode_json(body: bytes) -> Any:
    """``json.loads``, with every way valid JSON can fail to decode reported as a JSON decoding error."""
    try:
        return json.loads(body, parse_int=int_or_infinite)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply to decode", "", 0) from None
    except UnicodeDecodeError as error:
        raise json.JSONDecodeError(f"not UTF-8, UTF-16 or UTF-32 text ({error.reason})", "", error.start) from None


class BoundedJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ServiceRoute(APIRoute):
    """Every route of the service: its JSON body is decoded by ``decode_json``."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedJSONRequest(request.scope, request.receive))

        return bounded


def checked_first(check: Callable[[Request], None]) -> type[ServiceRoute]:
    """A route class whose routes run ``check`` (which raises an ``HTTPException``) before the body is read."""

    class CheckedRoute(ServiceRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                check(request)
                return await handler(request)

            return checked

    return CheckedRoute


class HeadAsGet:
    """A HEAD request is routed as GET (a path without GET answers 405, naming its methods); the server leaves out
    the body, since the request it answers is still a HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
