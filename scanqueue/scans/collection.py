"""Collect finished scan Jobs: store the report, or hand the scan on, then delete Job and Secret.

A Job whose handling failed for a passing reason stays for the next pass;
storing twice changes nothing. It must never stop a pass for one bad Job.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scanqueue import (
    dedupe,
    discovery,
    errors,
    images,
    kube,
    manifests,
    reports,
    store,
)
from scanqueue.scans import ending, model, plan, rescan, submission

log = logging.getLogger(__name__)

# How long a Job's collect stays claimed: one collect takes well under a second; a
# claimant that died frees it after this, and a pass working from an older list of
# Jobs does not collect a Job again within it.
CLAIM_SECONDS = 60


def collect_job(
    ctx: model.ScanContext, name: str, summary: Mapping[str, Any] | None = None
) -> model.Result | None:
    """Collect the one finished scan Job ``name`` (sent by the Job watch); None if nothing to do.

    ``summary``: the Job as the watch saw it finished (``jobwatch.summary``), which
    spares reading it again; without it the Job is read. Gone already (collected by
    another worker or a pass), or not finished: nothing.
    """
    if summary is not None and (summary.get("metadata") or {}).get("name") == name:
        job: Mapping[str, Any] = summary
    else:
        try:
            job = kube.read_job(api=ctx.api, namespace=ctx.namespace, name=name)
        except kube.NotFound:
            return None
    state, reason = model.job_state(job)
    if state not in ("complete", "failed"):
        return None
    return collect_safely(ctx, job, state, reason)


def collect(ctx: model.ScanContext) -> list[model.Result]:
    """One reconcile pass over this cluster's scan Jobs: store finished ones and clean up.

    Complete: parse the pod log, store the report, mark the digest fresh.
    Failed with a registry refusal: submit the next plan step (attempt + 1).
    Failed otherwise (deadline, missing Secret, image not on the node, bad
    output): record why. A finished Job is deleted with its Secret once handled;
    one whose handling failed for a passing reason stays for the next pass.
    """
    jobs = kube.list_jobs(
        api=ctx.api,
        namespace=ctx.namespace,
        label_selector=manifests.cluster_selector(ctx.cluster.name),
    )
    _renew_claims(ctx, jobs)
    finished = [(job, *model.job_state(job)) for job in jobs]
    finished = [(job, state, reason) for job, state, reason in finished
                if state in ("complete", "failed")]  # fmt: skip
    if not finished:
        return []
    # The pods of every scan Job in one list per pass, not one list per Job.
    pods, _ = kube.list_pods(
        api=ctx.api,
        namespace=ctx.namespace,
        label_selector=manifests.cluster_selector(ctx.cluster.name),
    )
    by_job: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        owner = ((pod.get("metadata") or {}).get("labels") or {}).get(kube.JOB_NAME_LABEL)
        if owner:
            by_job.setdefault(str(owner), []).append(pod)
    results = []
    for job, state, reason in finished:
        name = str(job["metadata"]["name"])
        result = collect_safely(ctx, job, state, reason, pods=by_job.get(name, []))
        if result is not None:
            results.append(result)
    return results


def _renew_claims(ctx: model.ScanContext, jobs: Sequence[Mapping[str, Any]]) -> None:
    """Keep the digest claims of the scans whose Jobs still exist, a few times per claim's
    lifetime: a finished Job can wait long for its collect (its log unreadable for a while,
    say), and a claim that expired meanwhile would let the watcher publish the digest again,
    a second scan of it. Never fails the pass (the claims are renewed on the next one)."""
    claims = []
    for job in jobs:
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        try:
            payload = json.loads(annotations.get(model.ANNOTATION_REQUEST) or "null")
        except ValueError:
            continue
        if isinstance(payload, dict) and payload.get("digest") and payload.get("scan_id"):
            claims.append((str(payload["digest"]), str(payload["scan_id"])))
    if not claims:
        return
    ttl = ctx.settings.scan.inflight_ttl_seconds
    every = ttl // ending.INFLIGHT_REFRESHES
    try:
        dedupe.refresh_claims(ctx.redis, cluster=ctx.cluster.name, claims=claims,
                              ttl_seconds=ttl, every_seconds=every)  # fmt: skip
    except errors.TemporaryError as e:
        log.warning("claims of scans in flight not renewed: %s", e,
                    extra={"cluster": ctx.cluster.name})  # fmt: skip


def claim_key(job: Mapping[str, Any]) -> str:
    """What a collect claims: the Job's name and uid. A later Job of the same name (the
    digest scanned again in this cluster within CLAIM_SECONDS: a full scan asked for after
    an unusable SBOM) is another Job, collected at once, not after the first one's claim."""
    metadata = job.get("metadata") or {}
    uid = metadata.get("uid")
    return f"{metadata.get('name')}/{uid}" if uid else str(metadata.get("name"))


def collect_safely(
    ctx: model.ScanContext,
    job: Mapping[str, Any],
    state: str,
    reason: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> model.Result | None:
    """``_collect_one`` that never stops a pass: one bad Job must not hold up the others.

    A temporary failure leaves the Job for the next pass (storing and resubmitting
    are idempotent); a permanent one (e.g. 403 reading its log) ends its scan with
    the reason and deletes the Job, so it cannot block every later pass.
    """
    name = str(job["metadata"]["name"])
    where = {"cluster": ctx.cluster.name, "job": name}
    cluster = ctx.cluster.name
    claim = claim_key(job)
    if not dedupe.claim_collect(ctx.redis, cluster=cluster, job=claim, ttl_seconds=CLAIM_SECONDS):
        return None  # another worker collects it (or just did)
    try:
        return _collect_one(ctx, job, state, reason, pods=pods)
    except errors.TemporaryError as e:
        log.warning("collecting a scan Job failed; retried on the next pass: %s", e, extra=where)
        dedupe.release_collect(ctx.redis, cluster=cluster, job=claim)
        return None
    except errors.PermanentError as e:
        log.error("collecting a scan Job failed for good: %s", e, extra=where)
        try:
            request = discovery.from_payload(
                json.loads(
                    (job["metadata"].get("annotations") or {}).get(model.ANNOTATION_REQUEST, "null")
                )
            )
            ended = ending.end(
                ctx, request, status="failed", reason=f"collecting {name}: {e}", attempt=1
            )
            ending.delete(ctx, name)
        except errors.ScanqueueError as again:
            dedupe.release_collect(ctx.redis, cluster=cluster, job=claim)
            log.warning("could not end the scan of %s yet: %s", name, again, extra=where)
            return None
        return ended


def _collect_one(
    ctx: model.ScanContext,
    job: Mapping[str, Any],
    state: str,
    reason: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> model.Result:
    """Store or hand on one finished Job; ``pods``: its pods when already listed (else read)."""
    metadata = job.get("metadata") or {}
    name = str(metadata.get("name"))
    annotations = metadata.get("annotations") or {}
    try:
        payload = json.loads(annotations.get(model.ANNOTATION_REQUEST, "null"))
        request = discovery.from_payload(payload)
        step_index = int(annotations.get(model.ANNOTATION_CANDIDATE, "0"))
        attempt = int(annotations.get(manifests.ANNOTATION_ATTEMPT, "1"))
    except (ValueError, errors.PermanentError) as e:
        log.warning("scan Job without a readable request; deleting it", extra={"job": name})
        ending.delete(ctx, name)
        scan_id = str((metadata.get("labels") or {}).get(manifests.LABEL_SCAN_ID))
        return model.Result("failed", scan_id, "", name, f"unreadable scan Job annotations: {e}")
    pod, output = _pod_and_log(ctx, name, pods)
    # The submit that created this Job may have died before recording the scan; a
    # redelivered submit adopts the Job, but the Job may finish first: then the row is
    # recorded here, as the Job says. A first attempt's success records it only if the
    # ingest finds no row (its submit recorded these very values); a later attempt's row
    # may still hold the attempt before (its credential source), so it is recorded first.
    record = functools.partial(
        store.start_scan,
        scan_id=request.scan_id,
        cluster=request.cluster,
        digest=request.digest or "",
        image=str(images.parse(request.image).with_digest(request.digest))  # as submit has it
        if request.digest
        else request.image,
        mode=_mode_of(job, annotations),
        attempt=attempt,
        credential_source=annotations.get(model.ANNOTATION_SOURCE) or None,
        started_at=model.created(job),
    )
    if state != "complete" or attempt > 1:
        with ctx.db.connection() as conn:
            record(conn)
    if state == "complete":
        result = _store_report(ctx, request, name, output, attempt, record=record)
    else:
        result = _handle_failure(
            ctx,
            request,
            job_name=name,
            reason=reason,
            pod=pod,
            text=output.decode("utf-8", "replace"),
            step_index=step_index,
            attempt=attempt,
        )
    # The Secret is owned by the Job and goes with it (background propagation); it is also
    # deleted explicitly, so that a credential never waits on a slow garbage collector.
    # Anonymous and node-mode scans have no Secret: no request for them.
    has_secret = annotations.get(model.ANNOTATION_SOURCE) not in ("anonymous", "node")
    ending.delete(ctx, name, secret=has_secret)
    return result


def _mode_of(job: Mapping[str, Any], annotations: Mapping[str, str]) -> str:
    mode = (job["metadata"].get("labels") or {}).get(manifests.LABEL_MODE, "registry")
    if mode == "registry" and annotations.get(model.ANNOTATION_SOURCE) == "anonymous":
        return "anonymous"
    return str(mode)


def _pod_and_log(
    ctx: model.ScanContext, job_name: str, pods: Sequence[Mapping[str, Any]] | None
) -> tuple[Mapping[str, Any] | None, bytes]:
    """The Job's pod and its log's bytes (not decoded: a report goes to the parser as is)."""
    if pods is None:
        pods = kube.pods_of_job(api=ctx.api, namespace=ctx.namespace, name=job_name)
    if not pods:
        return None, b""
    pod = pods[-1]
    phase = (pod.get("status") or {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return pod, b""
    try:
        text = kube.read_pod_log_bytes(
            api=ctx.api,
            namespace=ctx.namespace,
            name=str(pod["metadata"]["name"]),
            container=manifests.CONTAINER,
            limit_bytes=model.MAX_LOG_BYTES,
        )
    except kube.NotFound:
        text = b""
    return pod, text


def _store_report(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    job_name: str,
    output: bytes,
    attempt: int,
    *,
    record: Callable[[Any], None],
) -> model.Result:
    digest = request.digest or ""
    source = f"log of scan Job {ctx.namespace}/{job_name}"
    try:
        try:
            report = reports.parse(output, source=source)
        except reports.InvalidReport:  # judged on the text, undecodable bytes replaced
            report = reports.parse(output.decode("utf-8", "replace"), source=source)
    except reports.InvalidReport as e:
        return ending.end(ctx, request, status="failed", reason=str(e), attempt=attempt)
    with ctx.db.connection() as conn:
        try:
            seconds = store.finish_scan(conn, scan_id=request.scan_id, report=report,
                                        finished_at=ctx.clock())  # fmt: skip
        except store.ScanNotRecorded:  # its submit died before recording it: the Job says
            record(conn)
            seconds = store.finish_scan(conn, scan_id=request.scan_id, report=report,
                                        finished_at=ctx.clock())  # fmt: skip
    # the package list, kept once per digest for rescans (never fails the scan)
    rescan.keep_sbom(settings=ctx.settings, db=ctx.db, scan_id=request.scan_id,
                     digest=digest, text=output)  # fmt: skip
    dedupe.mark_fresh(ctx.redis, digest, ttl_seconds=ctx.settings.scan.rescan_interval_seconds)
    log.info(
        "scan stored",
        extra={"scan_id": request.scan_id, "cluster": request.cluster, "digest": digest,
               "findings": len(report.findings)},
    )  # fmt: skip
    return model.Result(
        "succeeded",
        request.scan_id,
        digest,
        job_name,
        f"{len(report.findings)} findings",
        seconds=seconds,
    )


def _handle_failure(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    job_name: str,
    reason: str,
    pod: Mapping[str, Any] | None,
    text: str,
    step_index: int,
    attempt: int,
) -> model.Result:
    waiting = _waiting_reason(pod)
    last = _last_line(text)
    if model.REFUSED.search(text):
        # The next candidate gets its own Job (attempt + 1) before this one is deleted, so
        # a failure to submit leaves this Job for the next pass to try again.
        history = [f"attempt {attempt}: the cluster's pull was refused: {last}"]
        # this Job has finished: its slot goes to the next attempt's Job, not to a waiting scan
        following = manifests.job_name(ctx.cluster.name, request.digest or "", attempt + 1)
        dedupe.move_job_slot(ctx.redis, cluster=ctx.cluster.name, job=job_name, to=following,
                             now=ctx.clock().timestamp())  # fmt: skip
        try:
            return submission.submit(
                ctx,
                request,
                attempt=attempt + 1,
                start=plan.next_start(step_index),
                history=history,
            )
        except errors.PermanentError as e:
            return ending.end(ctx, request, status="failed", reason=str(e), attempt=attempt)
    if waiting == "CreateContainerConfigError":
        why = (f"scan Job {ctx.namespace}/{job_name}: its credential Secret was missing when "
               "the pod started (deleted by hand or by a sweep?); the digest is scanned again "
               "here after scan.backoff_transient_seconds, or sooner elsewhere")  # fmt: skip
        return ending.end(ctx, request, status="failed", reason=why, attempt=attempt)
    if waiting == "ErrImageNeverPull":
        why = (f"scan Job {ctx.namespace}/{job_name}: image {request.image}@{request.digest} "
               f"is no longer on node {request.node} (ErrImageNeverPull)")  # fmt: skip
        return ending.end(ctx, request, status="failed", reason=why, attempt=attempt)
    if waiting in ("ErrImagePull", "ImagePullBackOff"):
        why = (f"scan Job {ctx.namespace}/{job_name}: the cluster could not pull the scan "
               f"container's image ({waiting}); check the cluster's trivy_image "
               f"{ctx.cluster.trivy_image!r} and the nodes' access to it")  # fmt: skip
        return ending.end(ctx, request, status="failed", reason=why, attempt=attempt)
    if reason == "DeadlineExceeded":
        why = (f"scan Job {ctx.namespace}/{job_name} exceeded its deadline of "
               f"{ctx.settings.scan.job_deadline_seconds}s")  # fmt: skip
        if ctx.cluster.ca_bundle_configmap and not last:  # no output: it may never have run
            why += (f"; its pod printed nothing: if it never started, check that ConfigMap "
                    f"{ctx.namespace}/{ctx.cluster.ca_bundle_configmap} (ca_bundle_configmap) "
                    "exists with key ca.crt (the kubelet waits for it: FailedMount "
                    "events)")  # fmt: skip
        return ending.end(ctx, request, status="timeout", reason=why, attempt=attempt)
    why = f"scan Job {ctx.namespace}/{job_name} failed ({reason or 'no reason given'})"
    if last:
        why += f": {last}"
    return ending.end(ctx, request, status="failed", reason=why, attempt=attempt)


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
