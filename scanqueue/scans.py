"""Scan orchestration: submit one scan Job with one credential, collect it, sweep leftovers.

The Celery tasks in ``workers/`` are thin wrappers around ``submit``,
``collect`` and ``sweep``; everything they decide is here, with its
collaborators passed in a ``Farm``. It must never:

- merge credentials: a scan Job gets one candidate at a time, in kubelet
  order; a refused one moves the scan to the next candidate (a new Job,
  attempt + 1), never to a set;
- put a credential value anywhere but the scan Secret's ``data``: the Job's
  spec, annotations, the scan row and every message carry references only
  (``credential.source`` and the registry key);
- leave a Secret without an owner: the Job is created suspended, the Secret
  owned by the Job's uid, then the Job resumed; Job and Secret are deleted
  when the result is stored, and the sweep deletes whatever outlived its
  deadline;
- duplicate work on redelivery: Job and Secret names derive from
  (cluster, digest, attempt), creation is adopt-on-conflict, and storing a
  result twice changes nothing.

Candidate plan, by index ``i`` into the candidates of the image: ``i <
len(candidates)`` is that credential, ``i == len(candidates)`` an anonymous
pull, ``i == len(candidates) + 1`` node mode (the image as present on the
node). ``scan_mode`` ``registry`` never reaches node mode; ``node`` starts there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis

from scanqueue import (
    config,
    credentials,
    dedupe,
    discovery,
    errors,
    images,
    kube,
    manifests,
    registry,
    reports,
    store,
)

log = logging.getLogger(__name__)

ANNOTATION_REQUEST = "scanqueue.io/request"  # the scan request payload: references only
ANNOTATION_CANDIDATE = "scanqueue.io/candidate"  # index of the plan step this Job runs
ANNOTATION_SOURCE = "scanqueue.io/credential-source"  # where its credential came from
MAX_LOG_BYTES = 64 * 1024 * 1024  # a Trivy report larger than this is refused, not read
# What Trivy (go-containerregistry) prints when the registry refuses the pull's credential.
_REFUSED = re.compile(
    r"UNAUTHORIZED|authentication required|DENIED: |unauthorized: |"
    r"no basic auth credentials|401 Unauthorized|403 Forbidden",
)

Outcome = Literal["submitted", "adopted", "busy", "succeeded", "failed", "timeout", "refused"]


class Busy(errors.TemporaryError):
    """The cluster already runs ``max_inflight`` scan Jobs; submit again after ``delay``."""


@dataclasses.dataclass
class Farm:
    """What the orchestration needs for one cluster, built once per worker process."""

    settings: config.Settings
    cluster: config.ClusterSettings
    api: Any  # kubernetes ApiClient, built by kube.api_client
    db: Any  # psycopg_pool.ConnectionPool from store.pool
    redis: redis.Redis
    registry: registry.Client | None  # None: never ask registries from the farm
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

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

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- planning (pure)


def plan_step(
    *,
    candidates: Sequence[credentials.Credential],
    start: int,
    scan_mode: config.ScanMode,
    allow_anonymous: bool,
    node_name: str | None,
) -> Step | None:
    """The first usable plan step at or after ``start``, or None when the plan is exhausted.

    Pure. Anonymous is skipped when not allowed; node mode needs the node the
    workload runs on and is never used in ``registry`` scan mode.
    """
    anonymous, node = len(candidates), len(candidates) + 1
    index = node if scan_mode == "node" else start
    while index <= node:
        if index < anonymous:
            return Step(index, "registry", candidates[index])
        if index == anonymous and allow_anonymous and scan_mode != "node":
            return Step(index, "registry", None, "no candidate credential left: anonymous pull")
        if index == node and scan_mode != "registry" and node_name:
            return Step(index, "node", None, f"scanning the image as present on node {node_name}")
        index += 1
    return None


def next_start(step_index: int) -> int:
    """Where the plan resumes after step ``step_index`` was refused."""
    return step_index + 1


# ---------------------------------------------------------------- reading credentials


def read_candidates(
    farm: Farm, request: discovery.ScanRequest, image: images.Reference
) -> tuple[list[credentials.Credential], list[str]]:
    """Read the pull secrets fresh from the API; return the candidates and notes on skipped ones.

    The pod's ``imagePullSecrets``, or when it lists none its service
    account's, as the kubelet sees them. A missing or malformed secret is
    skipped with a note (the kubelet carries on too); API errors other than
    not-found propagate (``TemporaryError`` is retried by the task).
    """
    notes: list[str] = []
    names = list(request.pull_secrets)
    if not names:
        try:
            account = kube.read_service_account(
                api=farm.api, namespace=request.namespace, name=request.service_account
            )
        except kube.NotFound:
            notes.append(f"service account {request.namespace}/{request.service_account} not found")
            account = None
        names = credentials.pull_secret_names({}, account)
    keyrings: list[list[credentials.Credential]] = []
    for name in names:
        where = f"{request.namespace}/{name}"
        try:
            secret = kube.read_secret(api=farm.api, namespace=request.namespace, name=name)
        except kube.NotFound:
            notes.append(f"pull secret {where} not found")
            continue
        try:
            found, reason = credentials.from_secret(secret)
        except credentials.MalformedSecret as e:
            notes.append(str(e))
            continue
        if reason:
            notes.append(reason)
        keyrings.append(found)
    return credentials.candidates(image, keyrings), notes


# ---------------------------------------------------------------- submit


def submit(
    farm: Farm,
    request: discovery.ScanRequest,
    *,
    attempt: int = 1,
    start: int = 0,
    history: Sequence[str] = (),
) -> Result:
    """Create (or adopt) the scan Job of ``request`` for the first usable plan step from ``start``.

    Returns the ``Result``; records the scan as running. Ends the scan as
    refused (a row with every candidate's answer) when no step is usable.
    Raises ``Busy`` when the cluster is at its in-flight cap, ``TemporaryError``
    for API/registry trouble worth a retry, ``PermanentError`` for bad input
    (the task stores it as the scan's reason).
    """
    digest = request.digest
    if not digest:
        raise errors.PermanentError(
            f"scan request for {request.namespace}/{request.pod} container {request.container} "
            "has no image digest; the watcher publishes running containers only"
        )
    image = images.parse(request.image)
    candidates, notes = read_candidates(farm, request, image)
    refusals = list(history)
    step = _first_step(
        farm, request, image=image, candidates=candidates, start=start, refusals=refusals
    )
    secret_value = step.credential if step else None
    while step is not None and _is_identity_token(step.credential):
        try:
            secret_value = _pull_token_credential(farm, image.with_digest(digest), step)
            break
        except registry.NoCredentialAccepted as e:
            refusals.extend(str(r) for r in e.refusals)
            step = _first_step(
                farm, request, image=image, candidates=candidates, start=step.index + 1,
                refusals=refusals,
            )  # fmt: skip
            secret_value = step.credential if step else None
    if step is None:
        reason = _refused_reason(request, candidates, notes, refusals)
        return _end(farm, request, status="refused", reason=reason, attempt=attempt)
    spec = manifests.ScanSpec(
        cluster=farm.cluster,
        scan=farm.settings.scan,
        image=image.name,
        digest=digest,
        mode=step.mode,
        scan_id=request.scan_id,
        attempt=attempt,
        credential=_kind(step.credential),
        node_name=request.node if step.mode == "node" else None,
    )
    job_name = spec.job_name
    # The cap first, exact across every worker (an atomic Redis slot per Job name;
    # a redelivery of the same Job keeps its slot), then create-or-adopt the Job.
    _take_slot(farm, job_name)
    body = manifests.scan_job(spec)
    annotations = body["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_REQUEST] = json.dumps(discovery.to_payload(request), sort_keys=True)
    annotations[ANNOTATION_CANDIDATE] = str(step.index)
    annotations[ANNOTATION_SOURCE] = step.source or ""
    try:
        job = kube.create_job(api=farm.api, body=body)  # 409: the existing Job is returned
    except errors.PermanentError:
        # refused for good (422...): the slot taken for it must not wait for its expiry
        dedupe.free_job_slot(farm.redis, cluster=farm.cluster.name, job=job_name)
        raise
    owner = (job.get("metadata", {}).get("labels") or {}).get(manifests.LABEL_SCAN_ID)
    if owner != request.scan_id:
        # Another scan of this digest (an earlier claim that expired) runs this very Job:
        # its result serves this request too.
        return Result("adopted", request.scan_id, digest, job_name, f"Job runs scan {owner}")
    if job.get("metadata", {}).get("annotations", {}).get(ANNOTATION_CANDIDATE) != str(step.index):
        # Created by an earlier delivery that planned another step (secrets changed in
        # between): do not pair this step's credential with that Job; start over.
        _delete(farm, job_name, secret=False)
        raise errors.TemporaryError(
            f"scan Job {farm.namespace}/{job_name} was planned with another credential; "
            "deleted it, the scan is retried"
        )
    try:
        if secret_value is not None:
            kube.create_secret(
                api=farm.api,
                body=manifests.scan_secret(
                    spec, job_uid=str(job["metadata"]["uid"]), credential=secret_value
                ),
            )
        if job.get("spec", {}).get("suspend"):
            kube.resume_job(api=farm.api, namespace=farm.namespace, name=job_name)
    except kube.NotFound as e:
        # the Job vanished between create and here (deleted by a sweep or a person)
        raise errors.TemporaryError(f"{e}; the scan is retried") from None
    except errors.PermanentError:
        # never leave a suspended Job (and its slot) behind a Secret that cannot be made
        _delete(farm, job_name)
        raise
    with farm.db.connection() as conn:
        store.start_scan(
            conn,
            scan_id=request.scan_id,
            cluster=request.cluster,
            digest=digest,
            image=str(image.with_digest(digest)),
            mode=_scan_mode(step),
            attempt=attempt,
            credential_source=step.source,
            started_at=farm.clock(),
        )
    dedupe.refresh(
        farm.redis,
        digest,
        scan_id=request.scan_id,
        ttl_seconds=farm.settings.scan.inflight_ttl_seconds,
    )
    log.info(
        "scan Job submitted",
        extra={
            "scan_id": request.scan_id,
            "cluster": request.cluster,
            "digest": digest,
            "job": job_name,
            "attempt": attempt,
            "credential_source": step.source,
        },
    )
    return Result("submitted", request.scan_id, digest, job_name, step.source or "")


def _first_step(
    farm: Farm,
    request: discovery.ScanRequest,
    *,
    image: images.Reference,
    candidates: Sequence[credentials.Credential],
    start: int,
    refusals: list[str],
) -> Step | None:
    """The step to run, checked against the registry when the farm can reach it.

    Refusals heard from the registry are appended to ``refusals``.
    """
    scan = farm.settings.scan
    step = plan_step(
        candidates=candidates,
        start=start,
        scan_mode=farm.cluster.scan_mode,
        allow_anonymous=scan.allow_anonymous,
        node_name=request.node,
    )
    if step is None or step.mode == "node" or farm.registry is None:
        return step
    if not scan.verify_with_registry:
        return step
    remaining = list(candidates[step.index :])
    pinned = image.with_digest(request.digest or "")
    try:
        found = (
            farm.registry.resolve(pinned, remaining) if remaining or scan.allow_anonymous else None
        )
    except registry.NoCredentialAccepted as e:
        refusals.extend(str(r) for r in e.refusals)
        return plan_step(
            candidates=candidates,
            start=len(candidates) + 1,  # every registry step refused: node mode, if allowed
            scan_mode=farm.cluster.scan_mode,
            allow_anonymous=False,
            node_name=request.node,
        )
    except registry.RegistryUnavailable as e:
        # The farm cannot reach this registry (or not now): let the cluster try, which
        # may well reach it; a refusal there moves on to the next candidate.
        log.info(
            "registry not reachable from the farm; scanning unverified",
            extra={"scan_id": request.scan_id, "digest": request.digest, "detail": str(e)},
        )
        return step
    if found is None:
        return step
    refusals.extend(str(r) for r in found.refusals)
    if found.credential is None:
        return Step(len(candidates), "registry", None, "the registry allows anonymous pulls")
    index = step.index + remaining.index(found.credential)
    return Step(index, "registry", found.credential)


def _is_identity_token(credential: credentials.Credential | None) -> bool:
    """An identity token (an OAuth2 refresh token) with no password: Trivy cannot use it."""
    return (
        credential is not None
        and bool(credential.token)
        and not credential.password
        and credential.token_kind == "identitytoken"
    )


def _pull_token_credential(
    farm: Farm, pinned: images.Reference, step: Step
) -> credentials.Credential:
    """The credential for the scan Secret of ``step``: its identity token exchanged at the
    registry's realm for a short-lived pull token (the refresh token never leaves the farm).

    Raises ``NoCredentialAccepted`` when the exchange is refused or impossible.
    """
    credential = step.credential
    assert credential is not None
    if farm.registry is None:
        refusal = registry.Refusal(
            source=credential.source,
            registry=credential.registry,
            username=credential.username,
            kind="not-sent",
            status=None,
            detail="an identity token is exchanged for a pull token only when "
            "scan.verify_with_registry is on",
        )
        raise registry.NoCredentialAccepted(pinned, [refusal], "")
    token = farm.registry.pull_token(pinned, credential)
    return dataclasses.replace(
        credential, username="", password="", token=token, token_kind="registrytoken"
    )


def _kind(credential: credentials.Credential | None) -> manifests.CredentialKind | None:
    if credential is None:
        return None
    if credential.token and not credential.password:
        return "token"
    return "basic"


def _scan_mode(step: Step) -> str:
    if step.mode == "node":
        return "node"
    return "registry" if step.credential is not None else "anonymous"


def _take_slot(farm: Farm, job_name: str) -> None:
    """Admit ``job_name`` under the cluster's ``max_inflight``; raise ``Busy`` when it is full."""
    scan = farm.settings.scan
    admitted = dedupe.take_job_slot(
        farm.redis,
        cluster=farm.cluster.name,
        job=job_name,
        limit=farm.cluster.max_inflight,
        now=farm.clock().timestamp(),
        max_age=scan.job_deadline_seconds + scan.sweep_margin_seconds,
    )
    if not admitted:
        raise Busy(
            f"cluster {farm.cluster.name} has {farm.cluster.max_inflight} scan Jobs in flight "
            f"(max_inflight); submitting later",
            delay=max(1.0, scan.collect_interval_seconds),
        )


def _refused_reason(
    request: discovery.ScanRequest,
    candidates: Sequence[credentials.Credential],
    notes: Sequence[str],
    refusals: Sequence[str],
) -> str:
    parts = [f"no way to pull {request.image}@{request.digest}"]
    if candidates:
        parts.append(
            f"the registry refused all {len(candidates)} candidate(s): {'; '.join(refusals)}"
        )
    elif refusals:
        parts.append("; ".join(refusals))
    else:
        parts.append(f"no pull secret of {request.namespace} has a credential for it")
    if notes:
        parts.append("skipped: " + "; ".join(notes))
    return ". ".join(parts)


def _end(
    farm: Farm,
    request: discovery.ScanRequest,
    *,
    status: Literal["failed", "timeout", "refused"],
    reason: str,
    attempt: int,
) -> Result:
    """Record a scan that ends without a result; let another cluster try the digest."""
    digest = request.digest or ""
    with farm.db.connection() as conn:
        store.start_scan(
            conn,
            scan_id=request.scan_id,
            cluster=request.cluster,
            digest=digest,
            image=request.image if "@" in request.image else f"{request.image}@{digest}",
            mode="registry",
            attempt=attempt,
            credential_source=None,
            started_at=farm.clock(),
        )
        store.fail_scan(
            conn, scan_id=request.scan_id, status=status, reason=reason, finished_at=farm.clock()
        )
    dedupe.mark_failed_here(
        farm.redis,
        digest,
        cluster=request.cluster,
        ttl_seconds=farm.settings.scan.rescan_interval_seconds,
        scan_id=request.scan_id,
    )
    log.warning(
        "scan ended without a result",
        extra={"scan_id": request.scan_id, "cluster": request.cluster, "digest": digest,
               "status": status, "reason": reason},
    )  # fmt: skip
    return Result(status, request.scan_id, digest, detail=reason)


def fail(farm: Farm, request: discovery.ScanRequest, *, reason: str) -> Result:
    """End ``request`` as failed with ``reason`` (bad input, retries exhausted)."""
    return _end(farm, request, status="failed", reason=reason, attempt=1)


# ---------------------------------------------------------------- collect


def _state(job: Mapping[str, Any]) -> tuple[str, str]:
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


def collect(farm: Farm) -> list[Result]:
    """One reconcile pass over this cluster's scan Jobs: store finished ones and clean up.

    Complete: parse the pod log, store the report, mark the digest fresh.
    Failed with a registry refusal: submit the next plan step (attempt + 1).
    Failed otherwise (deadline, missing Secret, image not on the node, bad
    output): record why. A finished Job is deleted with its Secret once handled;
    one whose handling failed for a passing reason stays for the next pass.
    """
    jobs = kube.list_jobs(
        api=farm.api,
        namespace=farm.namespace,
        label_selector=manifests.cluster_selector(farm.cluster.name),
    )
    finished = [(job, *_state(job)) for job in jobs]
    finished = [(job, state, reason) for job, state, reason in finished
                if state in ("complete", "failed")]  # fmt: skip
    if not finished:
        return []
    # The pods of every scan Job in one list per pass, not one list per Job.
    pods, _ = kube.list_pods(
        api=farm.api,
        namespace=farm.namespace,
        label_selector=manifests.cluster_selector(farm.cluster.name),
    )
    by_job: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        owner = ((pod.get("metadata") or {}).get("labels") or {}).get(kube.JOB_NAME_LABEL)
        if owner:
            by_job.setdefault(str(owner), []).append(pod)
    results = []
    for job, state, reason in finished:
        name = str(job["metadata"]["name"])
        result = _collect_safely(farm, job, state, reason, pods=by_job.get(name, []))
        if result is not None:
            results.append(result)
    return results


def _collect_safely(
    farm: Farm,
    job: Mapping[str, Any],
    state: str,
    reason: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> Result | None:
    """``_collect_one`` that never stops a pass: one bad Job must not hold up the others.

    A temporary failure leaves the Job for the next pass (storing and resubmitting
    are idempotent); a permanent one (e.g. 403 reading its log) ends its scan with
    the reason and deletes the Job, so it cannot block every later pass.
    """
    name = str(job["metadata"]["name"])
    where = {"cluster": farm.cluster.name, "job": name}
    try:
        return _collect_one(farm, job, state, reason, pods=pods)
    except errors.TemporaryError as e:
        log.warning("collecting a scan Job failed; retried on the next pass: %s", e, extra=where)
        return None
    except errors.PermanentError as e:
        log.error("collecting a scan Job failed for good: %s", e, extra=where)
        try:
            request = discovery.from_payload(
                json.loads(
                    (job["metadata"].get("annotations") or {}).get(ANNOTATION_REQUEST, "null")
                )
            )
            ended = _end(
                farm, request, status="failed", reason=f"collecting {name}: {e}", attempt=1
            )
            _delete(farm, name)
        except errors.ScanqueueError as again:
            log.warning("could not end the scan of %s yet: %s", name, again, extra=where)
            return None
        return ended


def _collect_one(
    farm: Farm,
    job: Mapping[str, Any],
    state: str,
    reason: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> Result:
    """Store or hand on one finished Job; ``pods``: its pods when already listed (else read)."""
    metadata = job.get("metadata") or {}
    name = str(metadata.get("name"))
    annotations = metadata.get("annotations") or {}
    try:
        request = discovery.from_payload(json.loads(annotations.get(ANNOTATION_REQUEST, "null")))
        step_index = int(annotations.get(ANNOTATION_CANDIDATE, "0"))
        attempt = int(annotations.get(manifests.ANNOTATION_ATTEMPT, "1"))
    except (ValueError, errors.PermanentError) as e:
        log.warning("scan Job without a readable request; deleting it", extra={"job": name})
        _delete(farm, name)
        return Result("failed", str((metadata.get("labels") or {}).get(manifests.LABEL_SCAN_ID)),
                      "", name, f"unreadable scan Job annotations: {e}")  # fmt: skip
    pod, log_text = _pod_and_log(farm, name, pods)
    with farm.db.connection() as conn:
        # The submit that created this Job may have died before recording the scan; a
        # redelivered submit adopts the Job, but the Job may finish first.
        store.start_scan(
            conn,
            scan_id=request.scan_id,
            cluster=request.cluster,
            digest=request.digest or "",
            image=f"{images.parse(request.image).name}@{request.digest}",
            mode=_mode_of(job, annotations),
            attempt=attempt,
            credential_source=annotations.get(ANNOTATION_SOURCE) or None,
            started_at=_created(job),
        )
    if state == "complete":
        result = _store_report(farm, request, name, log_text, attempt)
    else:
        result = _handle_failure(
            farm,
            request,
            job_name=name,
            reason=reason,
            pod=pod,
            text=log_text,
            step_index=step_index,
            attempt=attempt,
        )
    # The Secret is owned by the Job and goes with it (background propagation); it is also
    # deleted explicitly, so that a credential never waits on a slow garbage collector.
    # Anonymous and node-mode scans have no Secret: no request for them.
    has_secret = annotations.get(ANNOTATION_SOURCE) not in ("anonymous", "node")
    _delete(farm, name, secret=has_secret)
    return result


def _mode_of(job: Mapping[str, Any], annotations: Mapping[str, str]) -> str:
    mode = (job["metadata"].get("labels") or {}).get(manifests.LABEL_MODE, "registry")
    if mode == "registry" and annotations.get(ANNOTATION_SOURCE) == "anonymous":
        return "anonymous"
    return str(mode)


def _pod_and_log(
    farm: Farm, job_name: str, pods: Sequence[Mapping[str, Any]] | None
) -> tuple[Mapping[str, Any] | None, str]:
    if pods is None:
        pods = kube.pods_of_job(api=farm.api, namespace=farm.namespace, name=job_name)
    if not pods:
        return None, ""
    pod = pods[-1]
    phase = (pod.get("status") or {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return pod, ""
    try:
        text = kube.read_pod_log(
            api=farm.api,
            namespace=farm.namespace,
            name=str(pod["metadata"]["name"]),
            container=manifests.CONTAINER,
            limit_bytes=MAX_LOG_BYTES,
        )
    except kube.NotFound:
        text = ""
    return pod, text


def _store_report(
    farm: Farm, request: discovery.ScanRequest, job_name: str, text: str, attempt: int
) -> Result:
    digest = request.digest or ""
    try:
        report = reports.parse(text, source=f"log of scan Job {farm.namespace}/{job_name}")
    except reports.InvalidReport as e:
        return _end(farm, request, status="failed", reason=str(e), attempt=attempt)
    with farm.db.connection() as conn:
        store.finish_scan(conn, scan_id=request.scan_id, report=report, finished_at=farm.clock())
    dedupe.mark_fresh(farm.redis, digest, ttl_seconds=farm.settings.scan.rescan_interval_seconds)
    log.info(
        "scan stored",
        extra={"scan_id": request.scan_id, "cluster": request.cluster, "digest": digest,
               "findings": len(report.findings)},
    )  # fmt: skip
    return Result(
        "succeeded", request.scan_id, digest, job_name, f"{len(report.findings)} findings"
    )


def _handle_failure(
    farm: Farm,
    request: discovery.ScanRequest,
    *,
    job_name: str,
    reason: str,
    pod: Mapping[str, Any] | None,
    text: str,
    step_index: int,
    attempt: int,
) -> Result:
    waiting = _waiting_reason(pod)
    last = _last_line(text)
    if _REFUSED.search(text):
        # The next candidate gets its own Job (attempt + 1) before this one is deleted, so
        # a failure to submit leaves this Job for the next pass to try again.
        history = [f"attempt {attempt}: the cluster's pull was refused: {last}"]
        # this Job has finished: its slot goes to the next attempt's Job
        dedupe.free_job_slot(farm.redis, cluster=farm.cluster.name, job=job_name)
        try:
            return submit(
                farm, request, attempt=attempt + 1, start=next_start(step_index), history=history
            )
        except errors.PermanentError as e:
            return _end(farm, request, status="failed", reason=str(e), attempt=attempt)
    if waiting == "CreateContainerConfigError":
        why = (f"scan Job {farm.namespace}/{job_name}: its credential Secret was missing when "
               "the pod started (deleted by hand or by a sweep?); the digest is scanned again "
               "here after scan.rescan_interval_seconds, or sooner elsewhere")  # fmt: skip
        return _end(farm, request, status="failed", reason=why, attempt=attempt)
    if waiting == "ErrImageNeverPull":
        why = (f"scan Job {farm.namespace}/{job_name}: image {request.image}@{request.digest} "
               f"is no longer on node {request.node} (ErrImageNeverPull)")  # fmt: skip
        return _end(farm, request, status="failed", reason=why, attempt=attempt)
    if waiting in ("ErrImagePull", "ImagePullBackOff"):
        why = (f"scan Job {farm.namespace}/{job_name}: the cluster could not pull the scan "
               f"container's image ({waiting}); check the cluster's trivy_image "
               f"{farm.cluster.trivy_image!r} and the nodes' access to it")  # fmt: skip
        return _end(farm, request, status="failed", reason=why, attempt=attempt)
    if reason == "DeadlineExceeded":
        why = (f"scan Job {farm.namespace}/{job_name} exceeded its deadline of "
               f"{farm.settings.scan.job_deadline_seconds}s")  # fmt: skip
        return _end(farm, request, status="timeout", reason=why, attempt=attempt)
    why = f"scan Job {farm.namespace}/{job_name} failed ({reason or 'no reason given'})"
    if last:
        why += f": {last}"
    return _end(farm, request, status="failed", reason=why, attempt=attempt)


def _waiting_reason(pod: Mapping[str, Any] | None) -> str:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason") or "")
    return ""


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _delete(farm: Farm, job_name: str, *, secret: bool = True) -> None:
    """Delete a scan Job (its pods and Secret follow by ownership) and give back its slot;
    with ``secret``, delete its Secret explicitly too, so that a credential never waits on
    the garbage collector (skipped only where the Job never had one)."""
    kube.delete_job(api=farm.api, namespace=farm.namespace, name=job_name)
    dedupe.free_job_slot(farm.redis, cluster=farm.cluster.name, job=job_name)
    if secret:
        kube.delete_secret(
            api=farm.api, namespace=farm.namespace, name=manifests.secret_name(job_name)
        )


# ---------------------------------------------------------------- sweep


@dataclasses.dataclass(frozen=True)
class Swept:
    jobs: int = 0
    secrets: int = 0
    scans_failed: int = 0
    scans_pruned: int = 0


def sweep(farm: Farm) -> Swept:
    """Delete scan Jobs and Secrets that outlived deadline + margin; fail scans left without a Job.

    Safe to run while scans run: only objects older than their deadline plus
    ``sweep_margin_seconds`` are touched, and a finished Job is left to
    ``collect`` until then.
    """
    scan = farm.settings.scan
    now = farm.clock()
    cutoff = now - timedelta(seconds=scan.job_deadline_seconds + scan.sweep_margin_seconds)
    selector = manifests.cluster_selector(farm.cluster.name)
    jobs = kube.list_jobs(api=farm.api, namespace=farm.namespace, label_selector=selector)
    live = {str(j["metadata"]["name"]) for j in jobs}
    deleted_jobs = 0
    for job in jobs:
        if _created(job) < cutoff:
            state, reason = _state(job)
            try:
                if state in ("complete", "failed"):
                    if _collect_safely(farm, job, state, reason) is None:
                        continue
                else:
                    _left_behind(farm, job)
                    _delete(farm, str(job["metadata"]["name"]))
            except errors.ScanqueueError as e:
                log.warning("sweeping scan Job %s failed: %s", job["metadata"]["name"], e,
                            extra={"cluster": farm.cluster.name})  # fmt: skip
                continue
            live.discard(str(job["metadata"]["name"]))
            deleted_jobs += 1
    deleted_secrets = 0
    for secret in kube.list_secrets(
        api=farm.api, namespace=farm.namespace, label_selector=selector
    ):
        owners = {o.get("name") for o in secret["metadata"].get("ownerReferences") or []}
        name = str(secret["metadata"]["name"])
        created = _created(secret)
        # An orphan gets a grace period: its Job may have been created after our list.
        orphan = not owners & live and created < now - timedelta(seconds=scan.sweep_margin_seconds)
        stale = created < cutoff or orphan
        if stale and kube.delete_secret(api=farm.api, namespace=farm.namespace, name=name):
            deleted_secrets += 1
    failed = 0
    with farm.db.connection() as conn:
        for scan_id, digest in store.running_scans(conn, cluster=farm.cluster.name, before=cutoff):
            store.fail_scan(
                conn,
                scan_id=scan_id,
                status="failed",
                reason=(
                    f"scan Job vanished from {farm.cluster.name}/{farm.namespace} before "
                    "its result was collected; the digest is scanned again"
                ),
                finished_at=now,
            )
            dedupe.release(farm.redis, digest, scan_id=scan_id)
            failed += 1
        pruned = store.prune_scans(conn, keep=farm.settings.database.retention_scans_per_digest)
    return Swept(deleted_jobs, deleted_secrets, failed, pruned)


def _left_behind(farm: Farm, job: Mapping[str, Any]) -> None:
    labels = job["metadata"].get("labels") or {}
    scan_id = str(labels.get(manifests.LABEL_SCAN_ID, ""))
    with farm.db.connection() as conn:
        row = store.get_scan(conn, scan_id) if scan_id else None
        if row is not None:
            store.fail_scan(
                conn,
                scan_id=scan_id,
                status="timeout",
                reason=(
                    f"scan Job {farm.namespace}/{job['metadata']['name']} still had not "
                    "finished past its deadline plus the sweep margin; deleted"
                ),
                finished_at=farm.clock(),
            )
            dedupe.release(farm.redis, row.digest, scan_id=scan_id)


def _created(obj: Mapping[str, Any]) -> datetime:
    text = str(obj["metadata"].get("creationTimestamp") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
