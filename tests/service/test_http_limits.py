"""How a request arrives is bounded: a head over the byte or field limit is a 431 with a JSON body as soon as it passes
the limit (never read in full), and heads within the limits are served, request after request on one connection; a
request that does not arrive whole in time is a 408 and its connection is closed; bytes that are not HTTP are a 400
with a JSON body saying why. Each against a real uvicorn server."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RedisServer, TrainedBundle
from tests.service.test_api import local_settings, running_service
from tests.service.test_cli import serve

READ_S = 1.5  # the test service's request read timeout


@pytest.fixture(scope="module")
def service(ste_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[str]:
    with running_service(
        local_settings(
            ste_bundle.root, redis_server.url, max_header_bytes=8192, max_headers=20, request_read_timeout_s=READ_S
        )
    ) as url:
        yield url


def exchange(url: str, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``chunks`` on one connection until the server answers or closes; (what it answered, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        try:
            for chunk in chunks:
                connection.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending
        with contextlib.suppress(OSError):  # already closed by the server
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while block := connection.recv(65536):
            answer += block
    return answer, sent


def status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_huge_header_is_a_431_before_it_is_read(service: str) -> None:
    def huge_header() -> Iterator[bytes]:
        yield b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-huge: "
        for _ in range(64 * 1024):  # 64 MiB, 1 KiB at a time
            yield b"a" * 1024

    started = time.monotonic()
    answer, sent = exchange(service, huge_header())
    status, body = status_and_body(answer)
    assert status == 431 and "8192 bytes" in str(body["detail"])
    assert sent < 32 << 20, f"{sent} bytes went in before the refusal"  # of 64 MiB: refused long before the end
    assert time.monotonic() - started < 10
    assert httpx.get(f"{service}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("head", "detail"),
    [
        (b"GET /recommend?user_id=" + b"u" * 20_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", "8192 bytes"),
        (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(21)) + b"\r\n", "20 header"),
    ],
    ids=["long request line", "too many fields"],
)
def test_heads_over_a_limit_are_a_431_naming_it(service: str, head: bytes, detail: str) -> None:
    status, body = status_and_body(exchange(service, iter([head]))[0])
    assert status == 431 and detail in str(body["detail"])


def test_heads_within_the_limits_are_served_one_after_another_on_a_connection(service: str) -> None:
    """Each request's head counts alone: two heads of 6 KB on one keep-alive connection are both within 8 KB."""
    with httpx.Client(base_url=service) as client:
        for _ in range(3):
            response = client.get("/healthz", headers={"x-padding": "p" * 6000, **{f"x-{i}": "1" for i in range(12)}})
            assert response.status_code == 200
        body = {"user_ids": ["u1"], "k": 3}  # a body in the same read as its head is not counted as head
        assert client.post("/recommend", content=json.dumps(body) + " " * 20_000,
                           headers={"content-type": "application/json"}).status_code == 200  # fmt: skip


def stalled(url: str, sent: bytes) -> socket.socket:
    """A connection that sent ``sent`` and then nothing more (the caller closes it)."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(sent)
    return connection


def answer_of(connection: socket.socket) -> tuple[bytes, float]:
    """What the server sends on ``connection`` until it closes it, and how long that took."""
    started, answer = time.monotonic(), b""
    with connection:
        while block := connection.recv(65536):
            answer += block
    return answer, time.monotonic() - started


STALLS = {
    "nothing sent": b"",
    "half a request line": b"GET /recommend?user_id=",
    "head without its end": b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
    "body shorter than declared": b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b'content-length: 100\r\n\r\n{"user_ids"',
    "second request stalled": b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /healthz HTTP/1.1\r\n",
}


@pytest.mark.parametrize("sent", STALLS.values(), ids=STALLS.keys())
def test_a_request_that_does_not_arrive_in_time_is_a_408_and_its_connection_closed(service: str, sent: bytes) -> None:
    answer, waited = answer_of(stalled(service, sent))
    status, body = status_and_body(answer.rpartition(b"HTTP/1.1 ")[1] + answer.rpartition(b"HTTP/1.1 ")[2])
    assert status == 408 and f"{READ_S:g} s" in str(body["detail"]), answer
    assert READ_S * 0.9 < waited < READ_S + 5


def test_stalled_connections_do_not_keep_others_waiting_and_are_all_closed(service: str) -> None:
    connections = [stalled(service, sent) for sent in list(STALLS.values()) * 20]
    try:
        for _ in range(5):  # served while a hundred connections hang
            assert httpx.get(f"{service}/healthz", timeout=5).status_code == 200
    finally:
        answers = [answer_of(connection) for connection in connections]
    assert all(b" 408 " in answer for answer, _ in answers)


def test_a_slow_request_that_arrives_in_time_is_served(service: str) -> None:
    pieces = [b"GET /healthz HTT", b"P/1.1\r\nhost: x\r\n", b"connection: close\r\n\r\n"]
    host, port = service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        for piece in pieces:  # READ_S * 0.6 in all
            connection.sendall(piece)
            time.sleep(READ_S * 0.2)
        answer = b""
        while block := connection.recv(65536):
            answer += block
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"FOO / HTTP/1.1\r\nhost: x\r\n\r\n", "method"),
        (b"GET /\xff HTTP/1.1\r\nhost: x\r\n\r\n", "url"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n\r\n", "header value"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx y: z\r\n\r\n", "header token"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", "Content-Length"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: " + b"9" * 30 + b"\r\n\r\n", "Content-Length"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", "Content-Length"),
    ],
    ids=["method", "url byte", "NUL in a header", "space in a name", "negative length", "huge length", "two framings"],
)
def test_bytes_that_are_not_http_are_a_400_saying_why(service: str, head: bytes, reason: str) -> None:
    status, body = status_and_body(exchange(service, iter([head]))[0])
    assert status == 400 and reason.lower() in str(body["detail"]).lower(), body


def test_recsys_serve_workers_bound_how_requests_arrive(ste_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    env = {"RECSYS_LOG_LEVEL": "warning", "RECSYS_REQUEST_READ_TIMEOUT_S": "1"}
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2", env=env)
    try:
        status, body = status_and_body(exchange(url, iter([b"GET /healthz HTTP/1.1\r\nx-big: " + b"b" * 100_000]))[0])
        assert status == 431 and "32768 bytes" in str(body["detail"])
        assert status_and_body(answer_of(stalled(url, b"GET /healthz HTTP/1.1\r\n"))[0])[0] == 408
        assert status_and_body(exchange(url, iter([b"FOO / HTTP/1.1\r\n\r\n"]))[0])[0] == 400
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr
