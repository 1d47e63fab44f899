"""Submit one scan Job with one credential: create suspended, add its Secret, resume.

Idempotent: Job and Secret names derive from (cluster, digest, attempt),
creation is adopt-on-conflict. It must never put a credential value
anywhere but the scan Secret's ``data``, nor leave a Secret without an owner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from scanqueue import (
    credentials,
    dedupe,
    discovery,
    errors,
    images,
    kube,
    manifests,
    registry,
    store,
)
from scanqueue.scans import ending, model, pending, plan

log = logging.getLogger(__name__)


def submit(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    attempt: int = 1,
    start: int = 0,
    history: Sequence[str] = (),
) -> model.Result:
    """Create (or adopt) the scan Job of ``request`` for the first usable plan step from ``start``.

    Returns the ``model.Result``; records the scan as running. The cap comes
    first, before any API call: a first attempt that finds its cluster at
    ``max_inflight`` is parked (outcome ``waiting``) and started by whoever
    frees a slot (``scans.pending``). Ends the scan as refused (a row with every
    candidate's answer) when no step is usable. Raises ``Busy`` when a later
    attempt lost the slot handed over to it, ``TemporaryError`` for API/registry
    trouble worth a retry (the slot is kept for it), ``PermanentError`` for bad
    input (the task stores it as the scan's reason; the slot is given back).
    """
    digest = request.digest
    if not digest:
        raise errors.PermanentError(
            f"scan request for {request.namespace}/{request.pod} container {request.container} "
            "has no image digest; the watcher publishes running containers only"
        )
    job_name = manifests.job_name(ctx.cluster.name, digest, attempt)
    if attempt > 1:
        take_slot(ctx, job_name)  # handed over by the refused attempt (collection)
    elif not _take_or_park(ctx, request, job_name):
        return model.Result("waiting", request.scan_id, digest, job_name, "waiting for a slot")
    try:
        result = _submit_in_slot(ctx, request, job_name=job_name, attempt=attempt,
                                 start=start, history=history)  # fmt: skip
    except errors.PermanentError:
        ending.free_slot(ctx, job_name)
        raise
    if result.outcome == "refused":  # no Job was made: its slot goes to a waiting scan
        ending.free_slot(ctx, job_name)
    return result


def _take_or_park(ctx: model.ScanContext, request: discovery.ScanRequest, job_name: str) -> bool:
    return pending.take_or_park(
        ctx.redis,
        cluster=ctx.cluster.name,
        job=job_name,
        limit=ctx.cluster.max_inflight,
        now=ctx.clock().timestamp(),
        max_age=ctx.slot_max_age,
        scan_id=request.scan_id,
        namespace=request.namespace,
        payload={"request": discovery.to_payload(request)},
    )


def _submit_in_slot(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    job_name: str,
    attempt: int,
    start: int,
    history: Sequence[str],
) -> model.Result:
    """``submit`` once the Job's slot is held: plan, create or adopt, Secret, resume."""
    digest = request.digest or ""
    image = images.parse(request.image)
    candidates, notes = plan.read_candidates(ctx, request, image)
    refusals = list(history)
    step, secret_value = _choose(
        ctx, request, image=image, candidates=candidates, start=start, refusals=refusals
    )
    if step is None:
        reason = plan.refused_reason(request, candidates, notes, refusals)
        return ending.end(ctx, request, status="refused", reason=reason, attempt=attempt)
    spec = manifests.ScanSpec(
        cluster=ctx.cluster,
        scan=ctx.settings.scan,
        image=image.name,
        digest=digest,
        mode=step.mode,
        scan_id=request.scan_id,
        attempt=attempt,
        credential=plan.kind(step.credential),
        node_name=request.node if step.mode == "node" else None,
        list_packages=ctx.settings.rescan.enabled,  # the SBOM rescans keep
    )
    assert spec.job_name == job_name
    job = kube.create_job(api=ctx.api, body=_job_body(spec, request, step))  # 409: existing
    owner = (job.get("metadata", {}).get("labels") or {}).get(manifests.LABEL_SCAN_ID)
    if owner != request.scan_id:
        # Another scan of this digest (an earlier claim that expired) runs this very Job:
        # its result serves this request too.
        return model.Result("adopted", request.scan_id, digest, job_name, f"Job runs scan {owner}")
    planned = job.get("metadata", {}).get("annotations", {}).get(model.ANNOTATION_CANDIDATE)
    if planned != str(step.index):
        # Created by an earlier delivery that planned another step (secrets changed in
        # between): do not pair this step's credential with that Job; start over.
        ending.delete(ctx, job_name, secret=False)
        raise errors.TemporaryError(
            f"scan Job {ctx.namespace}/{job_name} was planned with another credential; "
            "deleted it, the scan is retried"
        )
    try:
        if secret_value is not None:
            kube.create_secret(
                api=ctx.api,
                body=manifests.scan_secret(
                    spec, job_uid=str(job["metadata"]["uid"]), credential=secret_value
                ),
            )
        if job.get("spec", {}).get("suspend"):
            kube.resume_job(api=ctx.api, namespace=ctx.namespace, name=job_name)
    except kube.NotFound as e:
        # the Job vanished between create and here (deleted by a sweep or a person)
        raise errors.TemporaryError(f"{e}; the scan is retried") from None
    except errors.PermanentError:
        # never leave a suspended Job (and its slot) behind a Secret that cannot be made
        ending.delete(ctx, job_name)
        raise
    _record_started(
        ctx, request, pinned=image.with_digest(digest), step=step, job_name=job_name,
        attempt=attempt,
    )  # fmt: skip
    return model.Result("submitted", request.scan_id, digest, job_name, step.source or "")


def _choose(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    image: images.Reference,
    candidates: list[credentials.Credential],
    start: int,
    refusals: list[str],
) -> tuple[model.Step | None, credentials.Credential | None]:
    """The first step from ``start`` that yields a credential for the scan Secret (an
    identity token is exchanged for a pull token first), and that credential; refusals met
    on the way are added to ``refusals``. (None, None): no step is left."""
    digest = request.digest or ""
    step = plan.first_step(
        ctx, request, image=image, candidates=candidates, start=start, refusals=refusals
    )
    secret_value = step.credential if step else None
    while step is not None and plan.is_identity_token(step.credential):
        try:
            secret_value = plan.pull_token_credential(ctx, image.with_digest(digest), step)
            break
        except registry.NoCredentialAccepted as e:
            refusals.extend(str(r) for r in e.refusals)
            step = plan.first_step(
                ctx, request, image=image, candidates=candidates, start=step.index + 1,
                refusals=refusals,
            )  # fmt: skip
            secret_value = step.credential if step else None
    return step, secret_value


def _job_body(
    spec: manifests.ScanSpec, request: discovery.ScanRequest, step: model.Step
) -> dict[str, Any]:
    """The scan Job, annotated with its request and the plan step it runs (for collect)."""
    body = manifests.scan_job(spec)
    annotations = body["metadata"].setdefault("annotations", {})
    payload = json.dumps(discovery.to_payload(request), sort_keys=True)
    annotations[model.ANNOTATION_REQUEST] = payload
    annotations[model.ANNOTATION_CANDIDATE] = str(step.index)
    annotations[model.ANNOTATION_SOURCE] = step.source or ""
    return body


def _record_started(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    pinned: images.Reference,
    step: model.Step,
    job_name: str,
    attempt: int,
) -> None:
    """The scan row, the refreshed in-flight key and the log line of a submitted Job."""
    digest = request.digest or ""
    with ctx.db.connection() as conn:
        store.start_scan(
            conn,
            scan_id=request.scan_id,
            cluster=request.cluster,
            digest=digest,
            image=str(pinned),
            mode=plan.scan_mode(step),
            attempt=attempt,
            credential_source=step.source,
            started_at=ctx.clock(),
        )
    dedupe.refresh(
        ctx.redis,
        digest,
        scan_id=request.scan_id,
        ttl_seconds=ctx.settings.scan.inflight_ttl_seconds,
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


def take_slot(ctx: model.ScanContext, job_name: str) -> None:
    """Admit ``job_name`` under the cluster's ``max_inflight``; raise ``Busy`` when it is full."""
    scan = ctx.settings.scan
    admitted = dedupe.take_job_slot(
        ctx.redis,
        cluster=ctx.cluster.name,
        job=job_name,
        limit=ctx.cluster.max_inflight,
        now=ctx.clock().timestamp(),
        max_age=ctx.slot_max_age,
    )
    if not admitted:
        raise model.Busy(
            f"cluster {ctx.cluster.name} has {ctx.cluster.max_inflight} scan Jobs in flight "
            f"(max_inflight); submitting later",
            delay=max(1.0, scan.collect_interval_seconds),
        )
