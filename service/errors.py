"""Error responses that can always be written: a 422 echoes the input at fault, which may not be valid JSON.

Python's JSON parser accepts ``NaN``, ``Infinity`` and ``1e400`` (infinite), and FastAPI's 422 body echoes the
offending input; JSON cannot carry those values, so FastAPI's own handler cannot write that 422. Here the
echoed values are made writable (non-finite numbers become the strings JSON would need, bytes are decoded), and a
body that is not JSON at all is a 422 on ``body`` like any other invalid body.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def writable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name, bytes decoded and lone surrogates (JSON's
    ``"\\ud800"`` escapes, which no UTF-8 text can hold) written as their escapes, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(writable(k)): writable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [writable(v) for v in value]
    return value


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 (``{"detail": [{"loc", "msg", "type", "input"}, …]}``), whatever the input was."""
    assert isinstance(error, RequestValidationError)
    # Before the encoder: it decodes bytes strictly (a body of invalid UTF-8 would fail there). After it: it keeps
    # non-finite floats as they are, and renders objects (an error's context) it may hold.
    return JSONResponse(status_code=422, content={"detail": writable(jsonable_encoder(writable(error.errors())))})


BODY_PARSE_FAILURE = "There was an error parsing the body"  # FastAPI's 400 for a body it could not read


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """Starlette's HTTP errors as JSON, except FastAPI's 400 for a body it could not read, which is answered as
    every other invalid body is: a 422 on ``body``. (``service.routing`` decodes JSON bodies, reporting each way
    they fail as a JSON decoding error; this is for whatever else may fail.)"""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400 and error.detail == BODY_PARSE_FAILURE:
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": "the body is not JSON text", "input": None}]
        return JSONResponse(status_code=422, content={"detail": detail})
    headers = dict(error.headers or {})
    allowed = allowed_methods(request) if error.status_code == 405 else []
    if allowed:  # Starlette names the methods of the first route of the path only
        headers["Allow"] = ", ".join(allowed)
    return JSONResponse(status_code=error.status_code, content={"detail": error.detail}, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents for the request's path (GET and POST /recommend are two routes), HEAD with
    GET as Starlette answers it."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def search_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The search process did not answer: the service cannot rank now, a retry may succeed (503, not a bug's 500)."""
    return JSONResponse(
        status_code=503, content={"detail": "search unavailable, retry later"}, headers={"Retry-After": "1"}
    )
