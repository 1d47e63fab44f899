"""A scan Job that never finishes: its deadline ends it, the scan records a timeout, nothing stays.

The image lives on a registry that accepts connections and never answers:
the farm's own check gives up (registry_timeout_seconds) and lets the
cluster try, and the emulated kubelet's pull hangs, so the scan pod runs
until the Job's ``activeDeadlineSeconds`` fails it.
"""

from __future__ import annotations

from tests.support import reliability_fixtures as rel
from tests.support.farm_fixtures import SCAN_NAMESPACE


def test_scan_job_that_never_finishes_ends_as_a_timeout_and_is_cleaned_up(
    reliable_farm: rel.ReliableFarm, hanging_server: str
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    farm.scan["registry_timeout_seconds"] = 1.0
    farm.insecure.append(hanging_server)
    sim.create(rel.pull_secret("hang-cred", rel.dockerconfig(hanging_server, "u", "hang-pw-1")))
    image = f"{hanging_server}/team/hangs:1"
    digest = "sha256:" + "7" * 64
    sim.set_digest(image, digest)
    sim.create(rel.pod("hangs", image, secrets=["hang-cred"]))
    jobs = rel.ObjectRecorder(sim, "Job")
    farm.start()
    farm.wait_for(
        lambda: any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in sim.list("Pod", SCAN_NAMESPACE)
        ),
        timeout=60,
        what="the scan pod running (its pull hangs)",
    )
    ((got, status, attempt, error, findings),) = rel.wait_finished(farm, 1, timeout=60)
    assert (got, status, attempt, findings) == (digest, "timeout", 1, 0)
    assert "exceeded its deadline of 5s" in error
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")
    assert sim.list("Pod", SCAN_NAMESPACE) == []  # the hanging pod went with its Job
    jobs.stop()
    assert len(jobs.names()) == 1  # a timeout is recorded, not retried in a loop
    for process in [*farm.watchers, *farm.workers]:
        assert process.proc is not None and process.proc.poll() is None
