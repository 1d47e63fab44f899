"""Which credential a scan pulls with: the candidate plan, read fresh from the API.

Candidate plan, by index ``i`` into the candidates of the image: ``i <
len(candidates)`` is that credential, ``i == len(candidates)`` an anonymous
pull, ``i == len(candidates) + 1`` node mode (the image as present on the
node). ``scan_mode`` ``registry`` never reaches node mode; ``node`` starts there.
It must never merge credentials: one candidate per Job, in kubelet order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from scanqueue import (
    config,
    credentials,
    discovery,
    images,
    keyrings,
    manifests,
    registry,
)
from scanqueue.scans import model

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- planning (pure)


def plan_step(
    *,
    candidates: Sequence[credentials.Credential],
    start: int,
    scan_mode: config.ScanMode,
    allow_anonymous: bool,
    node_name: str | None,
) -> model.Step | None:
    """The first usable plan step at or after ``start``, or None when the plan is exhausted.

    Pure. Anonymous is skipped when not allowed; node mode needs the node the
    workload runs on and is never used in ``registry`` scan mode.
    """
    anonymous, node = len(candidates), len(candidates) + 1
    index = node if scan_mode == "node" else start
    while index <= node:
        if index < anonymous:
            return model.Step(index, "registry", candidates[index])
        if index == anonymous and allow_anonymous and scan_mode != "node":
            why = "no candidate credential left: anonymous pull"
            return model.Step(index, "registry", None, why)
        if index == node and scan_mode != "registry" and node_name:
            why = f"scanning the image as present on node {node_name}"
            return model.Step(index, "node", None, why)
        index += 1
    return None


def next_start(step_index: int) -> int:
    """Where the plan resumes after step ``step_index`` was refused."""
    return step_index + 1


# ---------------------------------------------------------------- reading credentials


def read_candidates(
    ctx: model.ScanContext, request: discovery.ScanRequest, image: images.Reference
) -> tuple[list[credentials.Credential], list[str]]:
    """Read the pull secrets fresh from the API; return the candidates and notes on skipped ones.

    The pod's ``imagePullSecrets``, or when it lists none its service
    account's, as the kubelet sees them. A missing or malformed secret is
    skipped with a note (the kubelet carries on too); API errors other than
    not-found propagate (``TemporaryError`` is retried by the task).
    """
    keyrings_found, notes = keyrings.read(
        ctx.api,
        namespace=request.namespace,
        pull_secrets=request.pull_secrets,
        service_account=request.service_account,
    )
    return credentials.candidates(image, keyrings_found), notes


def first_step(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    image: images.Reference,
    candidates: Sequence[credentials.Credential],
    start: int,
    refusals: list[str],
) -> model.Step | None:
    """The step to run, checked against the registry when the farm can reach it.

    Refusals heard from the registry are appended to ``refusals``.
    """
    scan = ctx.settings.scan
    step = plan_step(
        candidates=candidates,
        start=start,
        scan_mode=ctx.cluster.scan_mode,
        allow_anonymous=scan.allow_anonymous,
        node_name=request.node,
    )
    if step is None or step.mode == "node" or ctx.registry is None:
        return step
    if not scan.verify_with_registry:
        return step
    remaining = list(candidates[step.index :])
    pinned = image.with_digest(request.digest or "")
    try:
        found = (
            ctx.registry.resolve(pinned, remaining) if remaining or scan.allow_anonymous else None
        )
    except registry.NoCredentialAccepted as e:
        refusals.extend(str(r) for r in e.refusals)
        return plan_step(
            candidates=candidates,
            start=len(candidates) + 1,  # every registry step refused: node mode, if allowed
            scan_mode=ctx.cluster.scan_mode,
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
        return model.Step(len(candidates), "registry", None, "the registry allows anonymous pulls")
    index = step.index + remaining.index(found.credential)
    return model.Step(index, "registry", found.credential)


def is_identity_token(credential: credentials.Credential | None) -> bool:
    """An identity token (an OAuth2 refresh token) with no password: Trivy cannot use it."""
    return (
        credential is not None
        and bool(credential.token)
        and not credential.password
        and credential.token_kind == "identitytoken"
    )


def pull_token_credential(
    ctx: model.ScanContext, pinned: images.Reference, step: model.Step
) -> credentials.Credential:
    """The credential for the scan Secret of ``step``: its identity token exchanged at the
    registry's realm for a short-lived pull token (the refresh token never leaves the farm).

    Raises ``NoCredentialAccepted`` when the exchange is refused or impossible.
    """
    credential = step.credential
    assert credential is not None
    if ctx.registry is None:
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
    token = ctx.registry.pull_token(pinned, credential)
    return dataclasses.replace(
        credential, username="", password="", token=token, token_kind="registrytoken"
    )


def kind(credential: credentials.Credential | None) -> manifests.CredentialKind | None:
    if credential is None:
        return None
    if credential.token and not credential.password:
        return "token"
    return "basic"


def scan_mode(step: model.Step) -> str:
    if step.mode == "node":
        return "node"
    return "registry" if step.credential is not None else "anonymous"


def refused_reason(
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
