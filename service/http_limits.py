"""Bounds on a request's head (request line and headers): uvicorn's httptools protocol reads any head it is sent.

Without a bound, a client that sends one header of a hundred megabytes has the worker buffer all of it before the
request even reaches the app, and the worker's other connections wait while it does. This protocol counts a
request's head as it arrives and, past ``max_header_bytes`` bytes or ``max_headers`` header fields, answers 431
(Request Header Fields Too Large, RFC 6585) with a JSON body and closes the connection, having kept no more of it than
one read. ``recsys-serve`` runs uvicorn with it (``RECSYS_MAX_HEADER_BYTES``, ``RECSYS_MAX_HEADERS``).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_END = b"\r\n\r\n"


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, max_header_bytes: int, max_headers: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.max_headers = max_header_bytes, max_headers
        self._reading_head = True  # between two requests' heads: what arrives is counted
        self._head_bytes = 0
        self._head_lines = 0  # line ends so far: the request line's and one per header field
        self._head_tail = b""  # the last bytes of the head so far: its end, or a line's, may span two reads

    @classmethod
    def configured(cls, *, max_header_bytes: int, max_headers: int) -> partial[BoundedHeadProtocol]:
        """What uvicorn's ``http`` option takes (picklable, so that every worker process gets it)."""
        return partial(cls, max_header_bytes=max_header_bytes, max_headers=max_headers)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            seen = self._head_tail + data
            end = seen.find(HEAD_END)
            head = seen if end < 0 else seen[: end + 2]  # up to the last field's line end
            self._head_lines += head.count(b"\r\n") - self._head_tail.count(b"\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + len(HEAD_END) - len(self._head_tail))
            if size > self.max_header_bytes:
                self._refuse(f"request line and headers over the limit of {self.max_header_bytes} bytes")
                return
            if self._head_lines - 1 > self.max_headers:
                self._refuse(f"more than {self.max_headers} header fields")
                return
            if end < 0:
                self._head_bytes, self._head_tail = size, seen[-(len(HEAD_END) - 1) :]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._head_lines, self._head_tail = True, 0, 0, b""

    def _refuse(self, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()
        self._reading_head = False  # nothing more is read from this connection
