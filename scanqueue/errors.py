"""The error classes every layer of scanqueue raises.

The split matters to a queue: a ``PermanentError`` is stored as the scan's
reason and never retried; a ``TemporaryError`` is retried with backoff.
Messages name the object and the fix, and never carry a credential value.
"""

from __future__ import annotations


class ScanqueueError(Exception):
    """Root of every error scanqueue raises on purpose."""


class PermanentError(ScanqueueError):
    """Retrying cannot help: bad input, a refused credential, a malformed object."""


class TemporaryError(ScanqueueError):
    """Retrying may help: API 5xx/429, a registry timeout, a lost connection.

    ``delay`` is the suggested wait in seconds before the next attempt, when
    the other side said (``Retry-After``); ``None`` lets the caller back off.
    """

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class ConfigError(PermanentError):
    """A setting is missing, unknown or has a bad value; the message names it and where."""
