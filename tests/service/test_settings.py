"""Every setting that is a number is a finite one, and every duration is bounded: none overflows at first use."""

from __future__ import annotations

import socket
import subprocess
import sys

import annotated_types
import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings

FLOATS = [name for name, field in ServiceSettings.model_fields.items() if field.annotation is float]
DURATIONS = [name for name in ServiceSettings.model_fields if name.endswith(("_s", "_ms"))]


def upper_bound(name: str) -> float | None:
    limits = [m.le for m in ServiceSettings.model_fields[name].metadata if isinstance(m, annotated_types.Le)]
    return float(limits[0]) if limits else None


def test_the_lists_are_read_from_the_settings() -> None:
    assert {"redis_timeout_s", "search_timeout_s", "batch_max_wait_ms"} <= set(FLOATS)
    assert {"user_code_ttl_s", "events_ttl_s", "watch_interval_s", "reload_timeout_s"} <= set(DURATIONS)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_float_setting_takes_a_non_finite_number(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        ServiceSettings(**{name: value})


@pytest.mark.parametrize("name", DURATIONS)
def test_every_duration_is_bounded_where_a_socket_timeout_still_fits(name: str) -> None:
    bound = upper_bound(name)
    assert bound is not None, f"{name} takes any duration"
    seconds = bound / 1000 if name.endswith("_ms") else bound
    with socket.socket() as probe:
        probe.settimeout(seconds)  # the largest allowed is still a timeout the platform can hold
    with pytest.raises(ValidationError, match="less than or equal"):
        ServiceSettings(**{name: bound * 2})


def test_an_infinite_timeout_from_the_environment_is_one_line_before_anything_starts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--port", "1"],
        capture_output=True, text=True, timeout=60, env={"RECSYS_SEARCH_TIMEOUT_S": "inf", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "recsys-serve: error: setting search_timeout_s: Input should be a finite number"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("RECSYS_REDIS_URL", "garbage", "setting redis_url: Value error, Redis URL must specify one of"),
        ("RECSYS_REDIS_URL", "", "setting redis_url"),
        ("RECSYS_REDIS_URL", "http://127.0.0.1:6379/0", "setting redis_url"),
        ("RECSYS_REDIS_URL", "redis://127.0.0.1:99999/0", "Port out of range"),
        ("RECSYS_LOG_LEVEL", "nonsense", "setting log_level: Input should be 'critical', 'error'"),
        ("RECSYS_LOG_LEVEL", "", "setting log_level"),
        ("RECSYS_WARM_MAX_FETCH", "-1", "setting warm_max_fetch: Input should be greater than or equal to 0"),
        ("RECSYS_WARM_MAX_FETCH", "8192", "setting warm_max_fetch: Input should be less than or equal to 4096"),
    ],
)
def test_a_setting_the_service_could_not_use_is_one_line_before_anything_starts(
    variable: str, value: str, words: str
) -> None:
    """Refused in settings, not by the first worker's connection pool or logger (a traceback, or with several
    workers an exit code of 0)."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--port", "1"],
        capture_output=True, text=True, timeout=60, env={variable: value, "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("recsys-serve: error: ") and words in result.stderr


def test_usable_spellings_are_taken() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache:6380/2", "unix:///run/redis.sock"):
        assert ServiceSettings(redis_url=url).redis_url == url
    assert ServiceSettings(log_level="WARNING").log_level == "warning"
