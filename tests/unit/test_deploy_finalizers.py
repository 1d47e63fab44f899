"""deploy/: the worker may set blockOwnerDeletion on a scan Secret's owner reference.

Clusters with the OwnerReferencesPermissionEnforcement admission plugin refuse an
ownerReference with ``blockOwnerDeletion: true`` unless its author may ``update`` the
owner's ``finalizers`` subresource; the scan Secret is owned that way by its Job.
"""

from __future__ import annotations

from scanqueue import manifests
from tests.unit import test_deploy, test_manifests


def test_worker_may_update_job_finalizers_in_the_scan_namespace_only() -> None:
    grants = {
        (g.namespace, g.group, g.resource, g.verb)
        for g in test_deploy.grants(test_deploy.WORKER)
        if g.resource == "jobs/finalizers"
    }
    assert grants == {(test_deploy.SCANS_NS, "batch", "jobs/finalizers", "update")}


def test_scan_secret_owner_reference_blocks_owner_deletion() -> None:
    # the reason for the grant above: if the Secret stops blocking, the grant can go
    from scanqueue import credentials

    spec = test_manifests.spec()
    credential = credentials.Credential(registry="r.example.com", username="u", password="p")
    secret = manifests.scan_secret(spec, job_uid="uid-1", credential=credential)
    owners = secret["metadata"]["ownerReferences"]
    assert [(o["kind"], o["blockOwnerDeletion"]) for o in owners] == [("Job", True)]
