"""Structured logs: one record per line, context fields, redaction, idempotent setup."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanqueue import errors, logs

CANARY = "canary-pw-7f3a9c"
CANARY_B64 = base64.b64encode(f"alice:{CANARY}".encode()).decode()


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A buffer to set logs up to; the root logger's handlers and level restored afterwards.

    A handler that ``logs.setup`` installed earlier in the session (another test, a
    command run in-process) is set aside for the test, so each test starts from none.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for handler in saved_handlers:
        if getattr(handler, "_scanqueue_handler", False):
            root.removeHandler(handler)
    yield io.StringIO()
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line]


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_scanqueue_handler", False)]


def test_json_line_has_time_level_logger_message_and_scan_context(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream=stream)
    logging.getLogger("scanqueue.worker").info(
        "scan %s submitted",
        "s-1",
        extra={"scan_id": "s-1", "cluster": "prod-eu", "digest": "sha256:" + "a" * 64},
    )
    (line,) = _lines(stream)
    record = json.loads(line)
    assert record["level"] == "INFO"
    assert record["logger"] == "scanqueue.worker"
    assert record["message"] == "scan s-1 submitted"
    assert record["scan_id"] == "s-1"
    assert record["cluster"] == "prod-eu"
    assert record["digest"] == "sha256:" + "a" * 64
    assert record["time"].endswith("Z")
    assert list(record)[:4] == ["time", "level", "logger", "message"]


def test_context_fields_are_absent_when_not_passed(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream=stream)
    logging.getLogger("scanqueue.watcher").info("watching")
    record = json.loads(_lines(stream)[0])
    assert set(record) == {"time", "level", "logger", "message"}


def test_unknown_extra_objects_never_reach_the_line(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream=stream)

    class Leaky:
        def __repr__(self) -> str:
            return f"Leaky({CANARY})"

        __str__ = __repr__

    logging.getLogger("x").info("hello", extra={"credential": Leaky(), "cluster": "dev"})
    text = stream.getvalue()
    assert CANARY not in text
    assert json.loads(_lines(stream)[0])["cluster"] == "dev"


def test_alert_lines_name_the_delivery_and_the_webhook(stream: io.StringIO) -> None:
    """workers/alerts.py passes both; an operator who added a webhook looks for them."""
    logs.setup("INFO", "json", stream=stream)
    logging.getLogger("workers.alerts").info(
        "alert delivered", extra={"delivery": 7, "webhook": "slack#0 (hooks.slack.com)"}
    )
    (line,) = _lines(stream)
    record = json.loads(line)
    assert (record["delivery"], record["webhook"]) == (7, "slack#0 (hooks.slack.com)")


def test_multiline_message_and_traceback_stay_on_one_line(stream: io.StringIO) -> None:
    logs.setup("DEBUG", "json", stream=stream)
    try:
        raise RuntimeError("first\nsecond")
    except RuntimeError:
        logging.getLogger("x").exception("failed\nbadly", extra={"scan_id": "s-2"})
    lines = _lines(stream)
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "failed\nbadly"
    assert "Traceback" in record["exc_info"]
    assert "RuntimeError: first" in record["exc_info"]
    assert record["level"] == "ERROR"


def test_key_value_format_quotes_values_with_spaces(stream: io.StringIO) -> None:
    logs.setup("INFO", "kv", stream=stream)
    logging.getLogger("scanqueue.worker").warning(
        'registry said "no"', extra={"scan_id": "s-3", "cluster": "prod-eu", "attempt": 2}
    )
    (line,) = _lines(stream)
    assert " level=WARNING logger=scanqueue.worker " in line
    assert 'message="registry said \\"no\\""' in line
    assert line.endswith("scan_id=s-3 cluster=prod-eu attempt=2")
    assert line.startswith("time=")


def test_key_value_traceback_stays_on_one_line(stream: io.StringIO) -> None:
    logs.setup("INFO", "kv", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    lines = _lines(stream)
    assert len(lines) == 1
    assert "exc_info=" in lines[0]
    assert "ValueError: boom" in lines[0]


@pytest.mark.parametrize("fmt", ["json", "kv"])
def test_canary_password_in_a_formatted_exception_is_redacted(
    stream: io.StringIO, fmt: logs.Format
) -> None:
    logs.setup("INFO", fmt, stream=stream)
    log = logging.getLogger("scanqueue.registry")
    dockerconfig = json.dumps({"auths": {"r.example": {"auth": CANARY_B64, "password": CANARY}}})
    try:
        try:
            raise ConnectionError(f"GET /v2/ with Authorization: Basic {CANARY_B64} failed")
        except ConnectionError as inner:
            raise RuntimeError(
                f"login password={CANARY} refused; config was {dockerconfig}"
            ) from inner
    except RuntimeError:
        log.exception("scan failed for %s", f"postgresql://scan:{CANARY}@db/x")
    text = stream.getvalue()
    assert CANARY not in text
    assert CANARY_B64 not in text
    assert "[REDACTED]" in text
    assert "ConnectionError" in text  # the traceback itself is kept


def test_canary_in_context_field_is_redacted(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream=stream)
    logging.getLogger("x").info("pulled", extra={"image": f"https://u:{CANARY}@r.example/app"})
    assert CANARY not in stream.getvalue()


def test_canary_in_a_python_repr_is_redacted(stream: io.StringIO) -> None:
    logs.setup("INFO", "kv", stream=stream)
    logging.getLogger("x").info("got %r", {"username": "alice", "password": CANARY})
    logging.getLogger("x").info("got Login(user='alice', password='%s')", CANARY)
    assert CANARY not in stream.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "pull secret: team-a/regcred has no .dockerconfigjson key",
        "basic authentication required by registry 127.0.0.1:5000",
        "image 127.0.0.1:5000/team/app@sha256:" + "b" * 64,
        "broker redis://redis:6379/0 unreachable",
        "scan s-1 finished: 3 critical, 4 high",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    assert logs.redact(text) == text


def test_redaction_filter_also_protects_other_handlers() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(logs.RedactingFilter())
    log = logging.getLogger("test_logs.other")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise PermissionError(f"token={CANARY}")
        except PermissionError:
            log.exception("Authorization: Bearer %s", CANARY_B64)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert CANARY not in buffer.getvalue()
    assert CANARY_B64 not in buffer.getvalue()
    assert "PermissionError" in buffer.getvalue()


def test_setup_twice_keeps_one_handler_and_the_new_format(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream=io.StringIO())
    logs.setup("WARNING", "kv", stream=stream)
    assert len(_ours()) == 1
    logging.getLogger("x").info("dropped")
    logging.getLogger("x").warning("kept")
    (line,) = _lines(stream)
    assert line.startswith("time=")
    assert "message=kept" in line


def test_setup_rejects_unknown_level_and_format(stream: io.StringIO) -> None:
    with pytest.raises(errors.ConfigError, match="log level 'LOUD'"):
        logs.setup("LOUD", "json", stream=stream)
    with pytest.raises(errors.ConfigError, match="log format 'xml'"):
        logs.setup("INFO", "xml", stream=stream)  # type: ignore[arg-type]
    assert _ours() == []


def test_importing_the_module_configures_no_handler() -> None:
    code = (
        "import logging, scanqueue.logs; "
        "root = logging.getLogger(); "
        "print(len(root.handlers), root.level)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", str(logging.WARNING)]


_FRAGMENTS = [
    "password", "PassWD", "secret", "Token", "identitytoken", "registrytoken", "auth",
    "x-registry-auth", "basic", "Bearer", "://", "postgresql://", "u", ":", "@", "=", "'",
    '"', "\\", " ", "\n", ",", "&", ";", "{", "}", "dXNlcjpwYXNz", "eyJhbGciOi", "AB12+/",
    "==", "db_", "_", "[REDACTED]", "host", "/db", "x", "Z9", "é", "pull secret",
]  # fmt: skip


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join))
@settings(max_examples=3000, deadline=None)
def test_a_line_without_a_trigger_word_is_what_the_patterns_would_leave(text: str) -> None:
    """``redact`` skips the substitutions when none of its trigger words is in the text:
    it must give what every pattern applied in turn gives, for any text."""
    slow = text
    for pattern, replacement in logs._PATTERNS:
        slow = pattern.sub(replacement, slow)
    assert logs.redact(text) == slow
    if not logs._TRIGGER.search(text):
        assert slow == text
