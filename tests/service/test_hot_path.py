"""GET /recommend's hot path answers exactly what the FastAPI route answers, and leaves it everything else."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.hot_path import RecommendHotPath
from service.settings import ServiceSettings
from tests.conftest import RedisServer, TrainedBundle
from tests.service.test_api import local_settings, running_service

HEADERS = ("content-type", "content-length", "x-model-version")


@pytest.fixture(scope="module")
def pair(ste_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """The same bundle and Redis served twice: with the hot path, and with every request through FastAPI."""
    with (
        running_service(local_settings(ste_bundle.root, redis_server.url, max_k=50)) as hot,
        running_service(local_settings(ste_bundle.root, redis_server.url, max_k=50, hot_path=False)) as plain,
        httpx.Client(base_url=hot, timeout=30) as hot_client,
        httpx.Client(base_url=plain, timeout=30) as plain_client,
    ):
        yield hot_client, plain_client


def same_answer(pair: tuple[httpx.Client, httpx.Client], method: str, target: str) -> httpx.Response:
    hot, plain = (client.request(method, target) for client in pair)
    assert hot.status_code == plain.status_code, (target, hot.text, plain.text)
    assert hot.content == plain.content, target
    for name in HEADERS:
        assert hot.headers.get(name) == plain.headers.get(name), (target, name)
    assert hot.headers["x-request-id"] and plain.headers["x-request-id"]
    return hot


def test_plain_requests_are_taken_and_everything_else_is_left_to_fastapi() -> None:
    path = RecommendHotPath(app=None, settings=ServiceSettings(default_k=20, max_k=50))  # type: ignore[arg-type]
    taken = {
        b"user_id=u1": ("u1", 20, True),
        b"user_id=u%201&k=7&exclude_seen=false": ("u 1", 7, False),
        b"k=50&user_id=%C3%A9&exclude_seen=1&utm=x": ("é", 50, True),  # unknown parameters are ignored, as FastAPI does
        b"user_id=" + b"x" * 256 + b"&exclude_seen=0": ("x" * 256, 20, False),
    }
    for query, expected in taken.items():
        assert path.plain_parameters(query) == expected, query
    left = [
        b"",
        b"k=5",
        b"user_id=",
        b"user_id=" + b"x" * 257,
        b"user_id=a%0Ab",
        b"user_id=a%7F",
        b"user_id=u1&user_id=u2",
        b"user_id=u1&k=0",
        b"user_id=u1&k=51",
        b"user_id=u1&k=05",
        b"user_id=u1&k=%2B5",
        b"user_id=u1&k=5.0",
        b"user_id=u1&k=5&k=6",
        b"user_id=u1&exclude_seen=yes",
        b"user_id=u1&exclude_seen=True",
        b"user_id=u1&exclude_seen=",
        b"user_id=u1&exclude_seen=true&exclude_seen=false",
    ]
    for query in left:
        assert path.plain_parameters(query) is None, query


def test_known_unknown_and_invalid_users_get_fastapis_answers(
    pair: tuple[httpx.Client, httpx.Client], ste_bundle: TrainedBundle
) -> None:
    users = ste_bundle.data.user_ids[:5]
    for user in users:
        for exclude in ("true", "false", "1", "0"):
            body = same_answer(pair, "GET", f"/recommend?user_id={quote(user)}&k=9&exclude_seen={exclude}").json()
            assert body["source"] == "codes" and len(body["items"]) == 9
    assert same_answer(pair, "GET", "/recommend?user_id=someone-new").json()["source"] == "popular"
    for target in ("/recommend", "/recommend?user_id=u1&k=0", "/recommend?user_id=u1&k=51", "/recommend?k=x",
                   "/recommend?user_id=a%00b", f"/recommend?user_id={users[0]}&exclude_seen=maybe"):  # fmt: skip
        assert same_answer(pair, "GET", target).status_code == 422
    same_answer(pair, "HEAD", f"/recommend?user_id={users[0]}")  # whatever FastAPI says of HEAD


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parameters=st.lists(
        st.tuples(
            st.sampled_from(["user_id", "k", "exclude_seen", "other"]),
            st.one_of(
                st.sampled_from(["u0", "u1", "u17", "nobody", "20", "7", "0", "51", "true", "false", "1", "0", "no"]),
                st.text(max_size=12),
            ),
        ),
        max_size=4,
    )
)
def test_any_query_string_gets_the_routes_answer(
    pair: tuple[httpx.Client, httpx.Client], parameters: list[tuple[str, str]]
) -> None:
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in parameters)
    same_answer(pair, "GET", f"/recommend?{query}")
