"""The farm's other paths, end to end: a Job refused by the registry moves to the next
candidate, rotated credentials are read at scan time, and bad outcomes end as scan rows
with a reason a person can act on — with nothing left behind in the cluster."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.e2e.test_scan_farm import NS, _dockerconfig, _leftovers, _pod, _secret
from tests.support import reliability_fixtures as reliability
from tests.support.farm_fixtures import Farm

REPORTS = Path(__file__).parents[1] / "data" / "trivy"


def _setup(farm: Farm) -> Any:
    sim = farm.clusters["alpha"]
    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return sim


def _finished(farm: Farm, count: int) -> Any:
    return farm.wait_for(
        lambda: (
            (s := farm.scans())
            and len(s) == count
            and all(v[0] != "running" for v in s.values())
            and s
        ),
        timeout=90,
        what=f"{count} finished scan(s)",
    )


def test_job_refused_by_the_registry_is_retried_with_the_next_candidate_alone(farm: Farm) -> None:
    """Without checking candidates from the farm, the cluster's refusal drives the order."""
    farm.scan["verify_with_registry"] = False
    sim = _setup(farm)
    host = farm.registry.host
    digest = farm.registry.push("team/refused-first", "1", content="refused first")
    sim.create(_secret("wrong-cred", _dockerconfig(host, REGISTRY_USER, "wrong-password")))
    sim.create(_secret("right-cred", _dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    image = f"{host}/team/refused-first:1"
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORTS / "node-alpine-3.19.json")
    sim.create(_pod("app", image, secrets=["wrong-cred", "right-cred"]))
    farm.start()
    scans = _finished(farm, 1)
    assert scans["team/refused-first"][:3] == ("succeeded", "registry", f"{NS}/right-cred ({host})")
    assert scans["team/refused-first"][4] == 7
    (attempt,) = farm.query("SELECT attempt FROM scans")[0]
    assert attempt == 2  # the first Job was refused (UNAUTHORIZED), the second one ran
    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")


def test_rotated_pull_secret_is_used_by_the_next_scan(farm: Farm) -> None:
    sim = _setup(farm)
    registry = farm.registry
    host = registry.host
    user, old, new = "rotating-user", "rotate-old-pw-1", "rotate-new-pw-2"
    registry.set_password(user, old)
    sim.create(_secret("rotating", _dockerconfig(host, user, old)))
    first = registry.push("team/rotating", "1", content="rotating v1")
    sim.set_digest(f"{host}/team/rotating:1", first)
    sim.create(_pod("v1", f"{host}/team/rotating:1", secrets=["rotating"]))
    farm.start()
    _finished(farm, 1)

    registry.set_password(user, new)  # the registry refuses the old password from now on
    secret = sim.get("Secret", NS, "rotating")
    secret["data"] = {
        ".dockerconfigjson": base64.b64encode(
            json.dumps(_dockerconfig(host, user, new)).encode()
        ).decode()
    }
    sim.replace(secret)
    second = registry.push("team/rotating", "2", content="rotating v2")
    sim.set_digest(f"{host}/team/rotating:2", second)
    sim.create(_pod("v2", f"{host}/team/rotating:2", secrets=["rotating"]))
    farm.wait_for(
        lambda: (
            farm.query("SELECT status FROM scans WHERE digest = %s", second) == [("succeeded",)]
        ),
        timeout=90,
        what="the second version scanned with the rotated password",
    )
    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")


def test_report_that_is_not_json_ends_as_a_failed_scan_showing_its_first_bytes(
    farm: Farm,
) -> None:
    sim = _setup(farm)
    registry = farm.registry
    host = registry.host
    sim.create(_secret("right-cred", _dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    digest = registry.push("team/garbage", "1", content="garbage output")
    sim.set_digest(f"{host}/team/garbage:1", digest)
    sim.set_report(digest, b"panic: runtime error: index out of range\ngoroutine 1 [running]:")
    sim.create(_pod("garbage", f"{host}/team/garbage:1", secrets=["right-cred"]))
    farm.start()
    status, _, _, error, findings = _finished(farm, 1)["team/garbage"]
    assert (status, findings) == ("failed", 0)
    assert "panic: runtime error" in error
    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")


def test_missing_pull_secret_ends_as_a_refused_scan_naming_it(farm: Farm) -> None:
    farm.scan["allow_anonymous"] = False
    farm.cluster_options["scan_mode"] = "registry"  # no node-mode fallback
    sim = _setup(farm)
    host = farm.registry.host
    digest = farm.registry.push("team/missing-secret", "1", content="missing secret")
    sim.set_digest(f"{host}/team/missing-secret:1", digest)
    sim.create(_pod("missing", f"{host}/team/missing-secret:1", secrets=["no-such-secret"]))
    farm.start()
    status, _, _, error, _ = _finished(farm, 1)["team/missing-secret"]
    assert status == "refused"
    assert f"pull secret {NS}/no-such-secret not found" in error
    assert not _leftovers(farm)


def test_identity_token_is_exchanged_and_the_scan_gets_only_a_pull_token(
    farm: Farm, token_world: Any
) -> None:
    """An identity token (OAuth2 refresh token) is never given to Trivy, which cannot use it:
    the farm exchanges it at the registry's realm and the scan Secret holds the access token."""
    sim = _setup(farm)
    issuer, host = token_world.issuer, token_world.registry.host
    farm.insecure.append(host)
    identity_token = "identity-token-canary-5b0e"
    issuer.refresh_tokens[identity_token] = "frank"
    issuer.grants["frank"] = {"team/idtoken": {"pull"}}
    digest = token_world.push("team/idtoken", "1", content="identity token")
    auth = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
    config = {"auths": {host: {"auth": auth, "identitytoken": identity_token}}}
    sim.create(_secret("acr-login", config))
    image = f"{host}/team/idtoken:1"
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORTS / "node-alpine-3.19.json")
    sim.create(_pod("app", image, secrets=["acr-login"]))
    seen = reliability.ObjectRecorder(sim, "Secret")
    farm.start()
    scans = _finished(farm, 1)
    assert scans["team/idtoken"][:3] == ("succeeded", "registry", f"{NS}/acr-login ({host})")
    assert scans["team/idtoken"][4] == 7
    seen.stop()
    (secret,) = seen.added
    assert sorted(secret["data"]) == ["token"]
    pull_token = base64.b64decode(secret["data"]["token"]).decode()
    assert pull_token and pull_token != identity_token  # an access token, not the refresh token
    assert identity_token not in json.dumps(seen.added)
    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")


def test_max_inflight_caps_the_scan_jobs_running_at_once_and_every_image_is_scanned(
    farm: Farm,
) -> None:
    """With max_inflight = 2 and 6 images, never more than 2 scan Jobs exist at once, though
    the worker runs 2 processes that submit concurrently; all 6 are scanned in the end."""
    farm.cluster_options["max_inflight"] = 2
    sim = _setup(farm)
    registry = farm.registry
    host = registry.host
    sim.create(_secret("right-cred", _dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    for i in range(6):
        digest = registry.push(f"team/capped-{i}", "1", content=f"capped {i}")
        sim.set_digest(f"{host}/team/capped-{i}:1", digest)
        sim.create(_pod(f"capped-{i}", f"{host}/team/capped-{i}:1", secrets=["right-cred"]))
    jobs = reliability.ObjectRecorder(sim, "Job")
    farm.start(workers=2)
    scans = _finished(farm, 6)
    jobs.stop()
    assert {v[0] for v in scans.values()} == {"succeeded"}
    assert len(jobs.added) == 6
    assert jobs.most_at_once <= 2, jobs.most_at_once
    assert jobs.most_at_once == 2  # the cap was reached, not merely never approached
    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")
