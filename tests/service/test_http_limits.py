"""Request heads are bounded: a head over the byte or field limit is a 431 with a JSON body as soon as it passes the
limit (never read in full), and heads within the limits are served, request after request on one connection."""

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


@pytest.fixture(scope="module")
def service(ste_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[str]:
    with running_service(
        local_settings(ste_bundle.root, redis_server.url, max_header_bytes=8192, max_headers=20)
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


def test_recsys_serve_workers_refuse_a_huge_header(ste_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2", env={"RECSYS_LOG_LEVEL": "warning"})
    try:
        status, body = status_and_body(exchange(url, iter([b"GET /healthz HTTP/1.1\r\nx-big: " + b"b" * 100_000]))[0])
        assert status == 431 and "32768 bytes" in str(body["detail"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr
