"""How long a digest that failed in a cluster waits before that cluster tries it again.

A scan that ends without a result marks its digest "failed here"
(``dedupe.failed_key``) so the cluster does not hammer a registry or the API
with a scan that cannot work. How long depends on why it failed:

``credential``
    no credential was accepted (401/403, no pull secret for the registry).
    Someone fixes the secret and expects a rescan soon, so the wait is short
    (``scan.backoff_credential_seconds``); ``scanqueue rescan`` ends it at once,
    and so does the watcher when a pod running the digest names new pull secrets.
``transient``
    the scan Job timed out, or its pod could not start (the scan image could
    not be pulled, the credential Secret was gone). Worth trying again soon,
    less often each time: ``scan.backoff_transient_seconds`` doubled per
    failure in a row, at most ``scan.backoff_failed_seconds``.
``failed``
    anything else (Trivy failed, its report was unreadable): trying again
    soon would fail the same way; ``scan.backoff_failed_seconds``.

Pure: no I/O, no clock; the caller counts failures in a row (``dedupe``).
Never put a credential in a reason: kinds are derived from reasons that
already name only secrets and registries.
"""

from __future__ import annotations

import re
from typing import Literal

from scanqueue import config

Kind = Literal["credential", "transient", "failed"]
KINDS: tuple[Kind, ...] = ("credential", "transient", "failed")

_CREDENTIAL = re.compile(
    r"no way to pull|UNAUTHORIZED|authentication required|DENIED: |unauthorized: |"
    r"no basic auth credentials|\b401\b|\b403\b|Forbidden|refused all",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"CreateContainerConfigError|ErrImagePull|ImagePullBackOff|ErrImageNeverPull|"
    r"could not pull the scan container|collecting |gave up after \d+ retries|timed? ?out|"
    r"DeadlineExceeded|temporar|retry later",
    re.IGNORECASE,
)


def kind(status: str, reason: str) -> Kind:
    """The kind of a scan that ended with ``status`` (failed/timeout/refused) and ``reason``."""
    if status == "refused":
        return "credential"
    if status == "timeout":
        return "transient"
    if _TRANSIENT.search(reason):
        return "transient"
    if _CREDENTIAL.search(reason):
        return "credential"
    return "failed"


def delay(failure: Kind, in_a_row: int, *, scan: config.ScanSettings) -> int:
    """Seconds before the cluster tries the digest again after its ``in_a_row``-th failure.

    ``in_a_row`` counts from 1. Never more than ``scan.rescan_interval_seconds``.
    """
    if failure == "credential":
        wait = scan.backoff_credential_seconds
    elif failure == "transient":
        steps = max(in_a_row, 1) - 1
        wait = scan.backoff_transient_seconds * (2 ** min(steps, 32))
        wait = min(wait, scan.backoff_failed_seconds)
    else:
        wait = scan.backoff_failed_seconds
    return max(1, min(int(wait), scan.rescan_interval_seconds))


def describe(failure: str) -> str:
    """One line saying what a kind means and what ends the wait, for ``explain``."""
    return {
        "credential": "no credential was accepted; fix the pull secret, then `scanqueue rescan`",
        "transient": "a timeout or a pod that could not start; retried with growing waits",
        "failed": "the scan itself failed (Trivy or its report); see the last scan's error",
    }.get(failure, "marked failed (no reason recorded; set by an older worker)")
