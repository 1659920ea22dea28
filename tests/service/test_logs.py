"""JSON log lines: one object per line, extra fields kept, exceptions included."""

from __future__ import annotations

import json
import logging

from service.logs import JsonFormatter


def test_json_lines_carry_the_message_and_extra_fields() -> None:
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "GET %s %d", ("/recommend", 200), None)
    record.request_id, record.ms = "abc", 1.5
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /recommend 200" and line["level"] == "info" and line["logger"] == "service.access"
    assert line["request_id"] == "abc" and line["ms"] == 1.5 and "time" in line


def test_exceptions_are_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, __import__("sys").exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]
