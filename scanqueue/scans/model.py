"""The values scan orchestration passes around: ``ScanContext`` (collaborators), ``Step``,
``Result``.

Also the scan Job annotations and the small readers of a Job's state and age
that submit, collect and sweep share. No I/O here; it must never hold a
credential value in a ``Result`` or an annotation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from scanqueue import (
    config,
    credentials,
    errors,
    registry,
)

ANNOTATION_REQUEST = "scanqueue.io/request"  # the scan request payload: references only
ANNOTATION_CANDIDATE = "scanqueue.io/candidate"  # index of the plan step this Job runs
ANNOTATION_SOURCE = "scanqueue.io/credential-source"  # where its credential came from
MAX_LOG_BYTES = 64 * 1024 * 1024  # a Trivy report larger than this is refused, not read
# What Trivy (go-containerregistry) prints when the registry refuses the pull's credential.
REFUSED = re.compile(
    r"UNAUTHORIZED|authentication required|DENIED: |unauthorized: |"
    r"no basic auth credentials|401 Unauthorized|403 Forbidden",
)

Outcome = Literal[
    "submitted", "adopted", "busy", "waiting", "succeeded", "failed", "timeout", "refused"
]


class Busy(errors.TemporaryError):
    """The cluster already runs ``max_inflight`` scan Jobs; submit again after ``delay``."""


@dataclasses.dataclass
class ScanContext:
    """What the orchestration needs for one cluster, built once per worker process."""

    settings: config.Settings
    cluster: config.ClusterSettings
    api: Any  # kubernetes ApiClient, built by kube.api_client
    db: Any  # psycopg_pool.ConnectionPool from store.pool
    redis: redis.Redis
    registry: registry.Client | None  # None: never ask registries from the farm
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Sends one scan task with these kwargs on this cluster's queue: how a freed slot
    # starts a waiting scan (a worker's collect task may keep it and submit the scan
    # itself once its own Job is handled). None: waiting scans are started by nobody here.
    publish: Callable[[dict[str, Any]], None] | None = None

    @property
    def slot_max_age(self) -> float:
        """Seconds after which a slot is stale: no scan Job lives longer."""
        scan = self.settings.scan
        return float(scan.job_deadline_seconds + scan.sweep_margin_seconds)

    @property
    def namespace(self) -> str:
        return self.cluster.scan_namespace


@dataclasses.dataclass(frozen=True)
class Step:
    """One plan step: how attempt ``attempt`` of a scan pulls the image."""

    index: int  # position in the plan (see the module docstring)
    mode: Literal["registry", "node"]
    credential: credentials.Credential | None  # None: anonymous (registry) or node mode
    note: str = ""  # why this step, for the scan row and logs (no secret)

    @property
    def source(self) -> str | None:
        if self.credential is not None:
            return f"{self.credential.source} ({self.credential.registry})"
        return "anonymous" if self.mode == "registry" else "node"


@dataclasses.dataclass(frozen=True)
class Result:
    """What one task did, for its return value and logs: no secret, small."""

    outcome: Outcome
    scan_id: str
    digest: str
    job: str = ""
    detail: str = ""
    # seconds from the scan's start to its end, when the step that ended it knows them (the
    # duration metric then needs no read of the scan row); not part of the task's result
    seconds: float | None = dataclasses.field(default=None, compare=False)

    def as_dict(self) -> dict[str, str]:
        return {"outcome": self.outcome, "scan_id": self.scan_id, "digest": self.digest,
                "job": self.job, "detail": self.detail}  # fmt: skip


def job_state(job: Mapping[str, Any]) -> tuple[str, str]:
    """("running" | "complete" | "failed" | "suspended", reason) of a Job from its status."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "complete", ""
        if condition.get("type") == "Failed":
            return "failed", str(condition.get("reason") or "")
    if (job.get("spec") or {}).get("suspend"):
        return "suspended", ""
    return "running", ""


def created(obj: Mapping[str, Any]) -> datetime:
    text = str(obj["metadata"].get("creationTimestamp") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
