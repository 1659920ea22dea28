"""Per-request bookkeeping as a plain ASGI middleware: request id, latency metric, one access-log line.

Starlette's ``@app.middleware("http")`` wraps every request in extra tasks and streams, a measurable share of
a short request; this wraps only ``send`` to read the status and add the ``X-Request-ID`` header.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

access = logging.getLogger("service.access")


class ObserveRequests:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = request_id or uuid.uuid4().hex
        status = 500
        started = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route: Any = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request_seconds.labels(route=path, status=str(status)).observe(seconds)
            if access.isEnabledFor(logging.INFO):
                access.info(
                    "%s %s %d", scope["method"], path, status,
                    extra={"request_id": request_id, "route": path, "status": status, "ms": 1000 * seconds},
                )  # fmt: skip
