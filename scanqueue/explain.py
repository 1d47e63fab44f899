"""``scanqueue explain``: what the farm knows and would do about each container of one pod.

Troubleshooting starts here, often run by a person with their own kubeconfig
and a read-only role (``deploy/23-rbac-explain.yaml``), not the farm's
identities. So every source is optional and every refusal is reported, not
raised: a pull secret it may not read becomes a note naming the missing
permission; no Redis or no Postgres means the farm's state or the last scan
is skipped, and ``skipped`` says so. Only reading the pod itself is required.

What it must never do: show a credential's value (only the secret's name and
the registry key), write anything, or need more than get/list on pods,
their owners, service accounts and (for the candidate list) secrets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis

from scanqueue import (
    config,
    credentials,
    dedupe,
    discovery,
    errors,
    images,
    keyrings,
    kube,
    sboms,
    store,
)
from scanqueue.store import sboms as stored_sboms

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class CandidateView:
    """One credential the kubelet would try: where it comes from, never its value."""

    source: str  # "namespace/secret-name"
    key: str  # the registry key as written in the secret


@dataclasses.dataclass(frozen=True)
class ContainerView:
    """What scanqueue knows and would do about one container of a pod."""

    request: discovery.ScanRequest
    candidates: tuple[CandidateView, ...]
    notes: tuple[str, ...]  # why a secret contributed nothing, an unparseable image, ...
    last_scan: store.ScanRow | None
    fresh: bool
    in_flight: dedupe.InFlight | None
    failed_in: tuple[str, ...]  # clusters where the digest is marked failed
    failed: tuple[dedupe.FailedMark, ...] = ()  # why, and when the next attempt is
    skipped: tuple[str, ...] = ()  # sources not consulted (no Redis, no database, ...)
    # the next evaluation: a full scan or a rescan from the stored SBOM, and why
    next_evaluation: sboms.Decision | None = None


def pod(
    *,
    settings: config.Settings,
    cluster: str,
    namespace: str,
    pod: str,
    api: kube.ApiClient,
    redis_client: redis.Redis | None,
    conn: Any | None,
) -> list[ContainerView]:
    """Per container of ``namespace/pod``: digest, candidate credentials in order, last scan.

    Reads the pod, its pull secrets (or its service account's) and the owner
    chain from the cluster, the dedupe state from Redis (``redis_client``) and
    the last scan from Postgres (``conn``); either may be None, and a source
    that fails or refuses is skipped with a note. Raises ``kube.NotFound``
    when the pod does not exist, ``kube.Forbidden`` when it may not be read.
    """
    items, _ = kube.list_pods(api=api, namespace=namespace)
    found = [p for p in items if (p.get("metadata") or {}).get("name") == pod]
    if not found:
        raise kube.NotFound(f"pod {namespace}/{pod} not found in cluster {cluster}")
    body = found[0]
    spec = body.get("spec") or {}
    notes: list[str] = []

    def lookup(kind: str, ns: str, name: str) -> Mapping[str, Any] | None:
        try:
            return kube.read_owner(api=api, kind=kind, namespace=ns, name=name)
        except kube.NotFound:
            return None
        except kube.Forbidden as e:
            notes.append(f"owner {kind} {ns}/{name} not read: {e}")
            return None

    requests = discovery.requests(body, cluster=cluster, owners=discovery.OwnerResolver(lookup))
    keyrings_found, secret_notes = keyrings.read(
        api,
        namespace=namespace,
        pull_secrets=credentials.pull_secret_names(spec, None),
        service_account=credentials.service_account_name(spec),
        forbidden_is_note=True,
    )
    notes += secret_notes
    clusters = [c.name for c in settings.clusters] or [cluster]
    skipped: list[str] = []
    if redis_client is None:
        skipped.append("farm state (no Redis): fresh, in flight, failed marks")
    if conn is None:
        skipped.append("last scan (no database)")
    views: list[ContainerView] = []
    for request in requests:
        chosen, image_notes = _candidates(request.image, keyrings_found)
        own_notes = notes + image_notes
        digest = request.digest
        state = _farm_state(redis_client, digest, clusters, skipped)
        last = None
        if conn is not None and digest:
            last = _optional(functools.partial(store.last_scan, conn, digest), "last scan", skipped)
        upcoming = None
        if conn is not None and digest:
            read = functools.partial(next_evaluation, conn, digest, settings)
            upcoming = _optional(read, "next evaluation", skipped)
        views.append(
            ContainerView(
                request=request,
                candidates=tuple(chosen),
                notes=tuple(own_notes),
                last_scan=last,
                fresh=state[0],
                in_flight=state[1],
                failed_in=tuple(m.cluster for m in state[2]),
                failed=tuple(state[2]),
                skipped=tuple(dict.fromkeys(skipped)),
                next_evaluation=upcoming,
            )
        )
    return views


def _candidates(image: str, found: list[keyrings.Keyring]) -> tuple[list[CandidateView], list[str]]:
    """The candidates for ``image`` in the kubelet's order, or a note why there are none."""
    try:
        reference = images.parse(image)
    except images.InvalidReference as e:
        return [], [str(e)]
    return [
        CandidateView(c.source, c.key or c.registry)
        for c in credentials.candidates(reference, found)
    ], []


def next_evaluation(conn: Any, digest: str, settings: config.Settings) -> sboms.Decision:
    """Whether the next evaluation of ``digest`` is a full scan or a rescan from its SBOM,
    and why (``scanqueue.sboms.decide`` on what Postgres holds)."""
    rescan = settings.rescan
    if not rescan.enabled:
        return sboms.Decision(
            "full", "rescans are off ([rescan] enabled = false): every evaluation is a full "
            f"scan, every scan.rescan_interval_seconds ({settings.scan.rescan_interval_seconds})",
            False,
        )  # fmt: skip
    return sboms.decide(
        stored_sboms.evaluation(conn, digest),
        now=datetime.now(UTC),
        interval_seconds=rescan.interval_seconds,
        db_updated_at=stored_sboms.current_db(conn),
        min_trivy_version=rescan.min_trivy_version,
    )


def _farm_state(
    conn: redis.Redis | None, digest: str | None, clusters: list[str], skipped: list[str]
) -> tuple[bool, dedupe.InFlight | None, list[dedupe.FailedMark]]:
    if conn is None or not digest:
        return False, None, []

    def read() -> tuple[bool, dedupe.InFlight | None, list[dedupe.FailedMark]]:
        return (
            dedupe.is_fresh(conn, digest),
            dedupe.in_flight(conn, digest),
            dedupe.failed_marks(conn, digest, clusters),
        )

    return _optional(read, "farm state (Redis)", skipped) or (False, None, [])


def _optional(read: Callable[[], _T], what: str, skipped: list[str]) -> _T | None:
    try:
        return read()
    except errors.TemporaryError as e:
        skipped.append(f"{what}: {e}")
        return None
