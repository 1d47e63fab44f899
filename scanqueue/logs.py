"""Structured logs: one JSON object (or one line of key=value pairs) per record.

Why: a farm of watchers and workers is read by log collectors, not by people
tailing one terminal; every line carries the scan it belongs to (``scan_id``,
``cluster``, ``digest``, passed with ``extra=``) so one scan can be followed
across processes.

What it must never do:
- configure anything at import time: only ``setup()`` installs a handler, and
  calling it again replaces that handler instead of adding a second one;
- print an arbitrary ``extra=`` object: only the names in ``FIELDS`` reach a
  line, so a credential object passed by mistake is not dumped;
- be relied upon to hide secrets. The redaction here (Basic/Bearer
  Authorization values, ``password=``/``"password":`` values, ``"auth":`` of a
  Docker config, the password of a ``scheme://user:pass@host`` URL) is defense
  in depth; the code that logs must not pass a credential in the first place.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import IO, Any, Literal

from scanqueue import errors

Format = Literal["json", "kv"]
FORMATS: tuple[Format, ...] = ("json", "kv")

# Context fields a record may carry via ``extra=``, in the order they are printed.
# The first three are the ones every scan-related line should have.
FIELDS: tuple[str, ...] = (
    "scan_id",
    "cluster",
    "digest",
    "namespace",
    "pod",
    "container",
    "image",
    "queue",
    "task_id",
    "attempt",
    "outcome",
    "duration_seconds",
    "job",
    "status",
    "reason",
    "detail",
    "credential_source",
    "findings",
    "delivery",  # an alert delivery's id (workers/alerts.py)
    "webhook",  # kind#index (host) of an alert webhook, never its URL
)

REDACTED = "[REDACTED]"
_SECRET_KEYS = r"password|passwd|secret|token|identitytoken|registrytoken|auth|x-registry-auth"
_COLON_KEYS = r"password|passwd|identitytoken|registrytoken"  # "pull secret: NAME" stays readable
_TOKEN = r"[A-Za-z0-9+/._~-]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Basic dXNlcjpwYXNz / Bearer eyJ... (a header, curl -H, or the bare scheme
    # word); the value must look encoded (an upper-case letter, digit, + or /), so that prose
    # such as "basic authentication" is left alone.
    (
        re.compile(rf"(?i)\b(basic|bearer)(\s+)(?-i:(?={_TOKEN}*[A-Z0-9+/])){_TOKEN}{{6,}}=*"),
        rf"\1\2{REDACTED}",
    ),
    # "password": "x", 'auth': 'x' (JSON, Python reprs), escaped quotes inside the value too
    (
        re.compile(rf"""(?i)(["'](?:{_SECRET_KEYS})["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""),
        rf"\1\2{REDACTED}\2",
    ),
    # password=x, db_password='x', token=x (key=value pairs, query strings, reprs, env dumps)
    (
        re.compile(
            rf"""(?i)\b((?:[a-z0-9_]*_)?(?:{_SECRET_KEYS})\s*=\s*)"""
            r"""(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^\s&;,'"]+)"""
        ),
        rf"\1{REDACTED}",
    ),
    # password: x (YAML, headers)
    (
        re.compile(rf"""(?i)\b((?:{_COLON_KEYS})\s*:\s*)(?!\[REDACTED\])[^\s&;,'"]+"""),
        rf"\1{REDACTED}",
    ),
    # scheme://user:password@host (database and broker URLs)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
)

# Each pattern above needs one of these in the text (its key words, "basic"/"bearer", or a
# URL's "://"): a line with none of them, most lines, is left as it is after one search
# instead of five substitutions (tests/unit/test_logs.py checks both ways agree).
_TRIGGER = re.compile(r"(?i)basic|bearer|passw|secret|token|auth|://")
_HANDLER_MARK = "_scanqueue_handler"


def redact(text: str) -> str:
    """Return ``text`` with anything that looks like a credential replaced by ``[REDACTED]``."""
    if not _TRIGGER.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrite a record's message, exception text and context fields through ``redact``.

    Attach it to a handler (filters on a logger do not see propagated records).
    It never drops a record; it returns True after rewriting.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as e:  # bad %-args: keep the template, say why
            message = f"{record.msg!s} (log arguments did not format: {type(e).__name__})"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = redact(value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """The ordered fields of one line, every string already redacted."""
    out: dict[str, Any] = {
        "time": _timestamp(record),
        "level": record.levelname,
        "logger": record.name,
        "message": redact(record.getMessage()),
    }
    for name in FIELDS:
        if name in record.__dict__:
            value = record.__dict__[name]
            if value is None or isinstance(value, bool | int | float):
                out[name] = value
            else:
                out[name] = redact(str(value))
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        out["exc_info"] = redact(record.exc_text)
    if record.stack_info:
        out["stack_info"] = redact(formatter.formatStack(record.stack_info))
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False, default=str)


_BARE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def _kv_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and _BARE.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted; newlines escaped: one line per record


class KeyValueFormatter(logging.Formatter):
    """One line of ``key=value`` pairs (logfmt); values with spaces or quotes are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record, self).items())


def formatter(fmt: Format) -> logging.Formatter:
    """The formatter for ``fmt``; raise ``ConfigError`` for an unknown format."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "kv":
        return KeyValueFormatter()
    raise errors.ConfigError(f"log format {fmt!r} is unknown; expected one of {', '.join(FORMATS)}")


def _level(level: int | str) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.strip().upper())
        if number is not None:
            return number
    raise errors.ConfigError(
        f"log level {level!r} is unknown; expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )


def setup(
    level: int | str = "INFO",
    fmt: Format = "json",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (default: stderr) as structured lines.

    Installs one handler, with the redaction filter, on the root logger and
    sets the root level. Idempotent: a second call replaces the handler the
    first one installed (new level, format or stream), never adds another.
    Returns the handler. Raises ``ConfigError`` for an unknown level or format.
    """
    numeric = _level(level)
    chosen = formatter(fmt)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(chosen)
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
