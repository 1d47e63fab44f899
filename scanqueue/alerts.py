"""Alerts on new findings: which findings qualify, the notification, and its three wire shapes.

Why it exists: teams act on being told, once, that a workload they own runs
something newly and seriously vulnerable. A scan that adds a qualifying finding
(default: a fixable CRITICAL) to a workload produces one notification per
workload and scan, sent to every configured webhook in its shape: scanqueue's
own JSON, Alertmanager's API v2 alert list, or a Slack incoming-webhook message.

Pure: values in, values out; the I/O is in ``store.alerts`` (the outbox, the
dedupe ledger, the deliveries), ``webhooks`` (the POST) and ``workers/alerts.py``
(the Celery task). This module is also the one parser of webhook URLs: the
configuration check and the connection use the same parsed ``Webhook``.

It must never put a credential into a notification, a payload, a repr or a
message: a webhook URL's user and password travel only in the Authorization
header of the POST to that very URL; a webhook is named ``kind#index`` (plus
its host) everywhere else, because the URL itself (a Slack webhook's path) is a
secret; every text field of a notification passes through ``logs.redact``.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from scanqueue import errors, logs, reports

Kind = Literal["generic", "alertmanager", "slack"]
KINDS: tuple[Kind, ...] = ("generic", "alertmanager", "slack")
ALERT_NAME = "ScanqueueNewVulnerabilities"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Which findings alert: at ``min_severity`` or above, and with a fixed version if asked."""

    min_severity: str = "CRITICAL"
    fixable_only: bool = True

    @property
    def min_rank(self) -> int:
        return reports.severity_rank(self.min_severity)

    def qualifies(self, severity: str, fixed_version: str) -> bool:
        """True when a finding of ``severity`` with ``fixed_version`` ('' = none) alerts."""
        return reports.severity_rank(severity) >= self.min_rank and (
            bool(fixed_version) or not self.fixable_only
        )


@dataclasses.dataclass(frozen=True)
class Webhook:
    """One configured webhook, parsed once; ``repr`` and ``display`` show no path or password."""

    kind: Kind
    index: int
    scheme: str
    host: str
    port: int
    target: str = dataclasses.field(repr=False)  # path and query: may hold a token (Slack)
    username: str = dataclasses.field(default="", repr=False)
    password: str = dataclasses.field(default="", repr=False)

    @property
    def name(self) -> str:
        """``kind#index``: how deliveries, logs and dead letters refer to this webhook."""
        return f"{self.kind}#{self.index}"

    @property
    def display(self) -> str:
        return f"{self.name} ({self.host})"


def parse_webhook(kind: str, index: int, url: str) -> Webhook:
    """Parse a configured webhook URL; raise ``PermanentError`` without echoing the URL."""
    if kind not in KINDS:
        raise errors.PermanentError(f"webhook kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise errors.PermanentError(
            f"{kind}#{index}: not a URL; expected http(s)://host[:port]/path"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.PermanentError(
            f"{kind}#{index}: expected an http:// or https:// URL with a host"
        )
    if parts.fragment:
        raise errors.PermanentError(f"{kind}#{index}: a webhook URL has no #fragment")
    return Webhook(
        kind=kind,  # checked against KINDS above
        index=index,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        username=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
    )


@dataclasses.dataclass(frozen=True)
class NewFinding:
    vulnerability_id: str
    severity: str
    package: str
    installed_version: str
    fixed_version: str
    title: str
    url: str


@dataclasses.dataclass(frozen=True)
class Notification:
    """New findings of one workload from one scan: what every webhook shape is made from."""

    scan_id: str
    cluster: str
    namespace: str
    workload_kind: str
    workload: str
    image: str
    digest: str
    scanned_at: datetime
    findings: tuple[NewFinding, ...]  # most severe first

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in reports.SEVERITIES}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        return {s: n for s, n in out.items() if n}

    def highest(self) -> str:
        return max(
            (f.severity for f in self.findings), key=reports.severity_rank, default="UNKNOWN"
        )


def notification(
    *,
    scan_id: str,
    workload: tuple[str, str, str, str],
    image: str,
    digest: str,
    scanned_at: datetime,
    findings: Sequence[NewFinding],
) -> Notification:
    """A notification with every text redacted and findings most severe first."""
    clean = tuple(
        sorted(
            (NewFinding(*(logs.redact(str(v)) for v in dataclasses.astuple(f))) for f in findings),
            key=lambda f: (-reports.severity_rank(f.severity), f.vulnerability_id, f.package),
        )
    )
    cluster, namespace, kind, name = (logs.redact(v) for v in workload)
    return Notification(
        scan_id=scan_id,
        cluster=cluster,
        namespace=namespace,
        workload_kind=kind,
        workload=name,
        image=logs.redact(image),
        digest=digest,
        scanned_at=scanned_at,
        findings=clean,
    )


def to_json(n: Notification) -> dict[str, Any]:
    """The stored form (alert_deliveries.notification) and the generic webhook's body."""
    return {
        "version": 1,
        "kind": "scanqueue.new_findings",
        "scan_id": n.scan_id,
        "cluster": n.cluster,
        "namespace": n.namespace,
        "workload": {"kind": n.workload_kind, "name": n.workload},
        "image": n.image,
        "digest": n.digest,
        "scanned_at": n.scanned_at.isoformat(),
        "counts": n.counts(),
        "findings": [dataclasses.asdict(f) for f in n.findings],
    }


def from_json(data: Mapping[str, Any]) -> Notification:
    return Notification(
        scan_id=data["scan_id"],
        cluster=data["cluster"],
        namespace=data["namespace"],
        workload_kind=data["workload"]["kind"],
        workload=data["workload"]["name"],
        image=data["image"],
        digest=data["digest"],
        scanned_at=datetime.fromisoformat(data["scanned_at"]),
        findings=tuple(NewFinding(**f) for f in data["findings"]),
    )


def _summary(n: Notification) -> str:
    counts = ", ".join(f"{c} {s}" for s, c in n.counts().items())
    return (
        f"{len(n.findings)} new vulnerabilities ({counts}) in {n.cluster}/{n.namespace} "
        f"{n.workload_kind}/{n.workload}"
    )


def _lines(n: Notification, limit: int) -> list[str]:
    lines = [
        f"{f.severity} {f.vulnerability_id} {f.package} {f.installed_version}"
        + (f" -> {f.fixed_version}" if f.fixed_version else " (no fix yet)")
        for f in n.findings[:limit]
    ]
    if len(n.findings) > limit:
        lines.append(f"... and {len(n.findings) - limit} more")
    return lines


def body(kind: Kind, n: Notification, *, now: datetime, max_findings: int = 20) -> bytes:
    """The POST body of ``n`` for a webhook of ``kind`` (UTF-8 JSON)."""
    if kind == "generic":
        doc: Any = to_json(n)
        doc["findings"] = doc["findings"][:max_findings]
        doc["findings_omitted"] = max(0, len(n.findings) - max_findings)
    elif kind == "alertmanager":
        # Alertmanager API v2 (POST /api/v2/alerts): a list of postable alerts. The label
        # set names the workload, so Alertmanager groups and deduplicates per workload.
        doc = [
            {
                "labels": {
                    "alertname": ALERT_NAME,
                    "severity": n.highest().lower(),
                    "cluster": n.cluster,
                    "namespace": n.namespace,
                    "workload_kind": n.workload_kind,
                    "workload": n.workload,
                },
                "annotations": {
                    "summary": _summary(n),
                    "description": "\n".join(_lines(n, max_findings)),
                    "image": n.image,
                    "scan_id": n.scan_id,
                },
                "startsAt": now.isoformat(),
            }
        ]
    elif kind == "slack":
        text = _summary(n)
        listing = "\n".join(_lines(n, max_findings))
        doc = {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{listing}```"}},
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"image {n.image} · scan {n.scan_id}"}],
                },
            ],
        }
    else:
        raise errors.PermanentError(f"webhook kind {kind!r} is not one of {', '.join(KINDS)}")
    return json.dumps(doc, separators=(",", ":")).encode()


def retry_delay(attempts: int, *, base: float, cap: float) -> float:
    """Seconds before attempt ``attempts + 1``: base, 2 x base, 4 x base..., at most ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))
