"""Bounds on how a request arrives, enforced before it reaches the app: its head's size, and the time it takes.

uvicorn's httptools protocol reads any head it is sent, for as long as it is sent. Without a bound on size, a client
that sends one header of a hundred megabytes has the worker buffer all of it before the request reaches the app, and
the worker's other connections wait while it does. Without a bound on time, a client that opens a connection and
sends half a head, or a body shorter than its ``Content-Length``, holds that connection (a file descriptor of the
worker) for ever; a few thousand such clients and the worker accepts no one else. So this protocol

- counts a request's head as it arrives and, past ``max_header_bytes`` bytes or ``max_headers`` header fields, answers
  431 (Request Header Fields Too Large, RFC 6585), having kept no more of it than one read;
- gives a request ``read_timeout_s`` from its first byte (or from the connection's opening, for the first request) to
  arrive whole, head and body, and otherwise answers 408 (Request Timeout) and closes; between requests uvicorn's
  keep-alive timeout closes an idle connection;
- answers bytes that are not HTTP/1.1 (a bad method, a control byte in a header, a ``Content-Length`` beside
  ``Transfer-Encoding``) with a 400 whose JSON body says what the parser refused, where uvicorn writes plain text.

Every such answer has a JSON body ``{"detail": …}``, as the app's own errors do, and closes the connection.
``recsys-serve`` runs uvicorn with it (``RECSYS_MAX_HEADER_BYTES``, ``RECSYS_MAX_HEADERS``,
``RECSYS_REQUEST_READ_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from service.settings import ServiceSettings

HEAD_END = b"\r\n\r\n"


class BoundedRequestProtocol(HttpToolsProtocol):
    def __init__(
        self, *args: Any, max_header_bytes: int, max_headers: int, read_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.max_headers, self.read_timeout_s = max_header_bytes, max_headers, read_timeout_s
        self._reading_head = True  # between two requests' heads: what arrives is counted
        self._head_bytes = 0
        self._head_lines = 0  # line ends so far: the request line's and one per header field
        self._head_tail = b""  # the last bytes of the head so far: its end, or a line's, may span two reads
        self._read_deadline: asyncio.TimerHandle | None = None  # armed while a request is arriving

    @classmethod
    def configured(cls, settings: ServiceSettings) -> partial[BoundedRequestProtocol]:
        """What uvicorn's ``http`` option takes (picklable, so that every worker process gets it)."""
        return partial(
            cls,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            read_timeout_s=settings.request_read_timeout_s,
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_deadline()  # a connection that never sends a byte is held no longer than a slow request

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            seen = self._head_tail + data
            end = seen.find(HEAD_END)
            head = seen if end < 0 else seen[: end + 2]  # up to the last field's line end
            self._head_lines += head.count(b"\r\n") - self._head_tail.count(b"\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + len(HEAD_END) - len(self._head_tail))
            if size > self.max_header_bytes:
                self._refuse(431, f"request line and headers over the limit of {self.max_header_bytes} bytes")
                return
            if self._head_lines - 1 > self.max_headers:
                self._refuse(431, f"more than {self.max_headers} header fields")
                return
            if end < 0:
                self._head_bytes, self._head_tail = size, seen[-(len(HEAD_END) - 1) :]
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self._read_deadline is None:  # the next request on a kept-alive connection (in the same read, pipelined)
            self._arm_read_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_read_deadline()  # the whole request is in: from here, the app's time, not the client's
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._head_lines, self._head_tail = True, 0, 0, b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refused, with the parser's reason (the error being handled)."""
        error = sys.exception()
        self._refuse(400, f"not a valid HTTP/1.1 request: {error}" if error is not None else msg)

    def _arm_read_deadline(self) -> None:
        self._disarm_read_deadline()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # the app answered before reading the rest: its answer stands, cut short
            return
        # An app waiting for the body sees the client leave (``http.disconnect``); nothing it writes after is sent.
        self._refuse(408, f"the request did not arrive whole within {self.read_timeout_s:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        reasons = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
        body = json.dumps({"detail": detail}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reasons[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()
        self._reading_head = False  # nothing more is read from this connection
        self._disarm_read_deadline()
