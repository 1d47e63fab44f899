"""Fault injection and request accounting, seen through the official client."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from tests.support.sim_fixtures import SimCluster


def test_injected_429_fails_the_next_requests_then_stops(sim: SimCluster) -> None:
    core = sim.core()
    sim.faults.fail(429, verb="list", resource="pods", count=2, retry_after=None)
    for _ in range(2):
        with pytest.raises(client.ApiException) as caught:
            core.list_namespaced_pod("default")
        assert caught.value.status == 429
        assert '"reason":"TooManyRequests"' in caught.value.body
    assert core.list_namespaced_pod("default").items == []
    # other verbs and resources were never affected
    core.list_namespaced_secret("default")
    assert sim.faults.injected == 2


def test_429_with_retry_after_is_retried_by_the_clients_urllib3(sim: SimCluster) -> None:
    """urllib3 retries a GET answered 429/503 with Retry-After (up to 3 times) by itself."""
    core = sim.core()
    sim.reset_counts()
    sim.faults.fail(429, verb="list", resource="pods", count=2, retry_after=0)
    assert core.list_namespaced_pod("default").items == []
    assert sim.request_counts()[("list", "pods")] == 3


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "InternalError"), (503, "ServiceUnavailable")]
)
def test_injected_server_errors_are_status_objects(
    sim: SimCluster, status: int, reason: str
) -> None:
    batch = sim.batch()
    sim.faults.fail(status, verb="create", resource="jobs")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x:1"}]}
            },
        },
    }
    with pytest.raises(client.ApiException) as caught:
        batch.create_namespaced_job("default", job)
    assert caught.value.status == status
    assert f'"reason":"{reason}"' in caught.value.body
    assert batch.list_namespaced_job("default").items == []
    assert batch.create_namespaced_job("default", job).metadata.name == "j"


def test_failing_until_cleared(sim: SimCluster) -> None:
    core = sim.core()
    sim.faults.fail(500, resource="secrets", count=-1)
    for _ in range(3):
        with pytest.raises(client.ApiException):
            core.list_namespaced_secret("default")
    sim.faults.clear()
    core.list_namespaced_secret("default")


def test_dropped_watch_connection_breaks_the_clients_stream(sim: SimCluster) -> None:
    core = sim.core()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def consume() -> None:
        try:
            for event in watch.Watch().stream(
                core.list_namespaced_secret, "default", timeout_seconds=30
            ):
                if event["object"].metadata.name == "first":
                    started.set()
            outcome["ended"] = "cleanly"
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError) as e:
            outcome["ended"] = type(e).__name__

    reader = threading.Thread(target=consume)
    reader.start()
    core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="first"))
    )
    assert started.wait(10)
    sim.faults.drop_watches()
    reader.join(15)
    assert not reader.is_alive()
    assert outcome["ended"] != "cleanly"


def test_forced_410_makes_the_next_watch_expire(sim: SimCluster) -> None:
    core = sim.core()
    listed = core.list_namespaced_secret("default")
    sim.faults.expire_watches("secrets")
    with pytest.raises(client.ApiException) as caught:
        list(
            watch.Watch().stream(
                core.list_namespaced_secret,
                "default",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=1,
            )
        )
    assert caught.value.status == 410
    # only once: the next watch works
    list(
        watch.Watch().stream(
            core.list_namespaced_secret,
            "default",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )


def test_request_counts_by_verb_and_resource(sim: SimCluster) -> None:
    core = sim.core()
    sim.reset_counts()
    core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="s"))
    )
    core.read_namespaced_secret("s", "default")
    core.read_namespaced_secret("s", "default")
    core.list_namespaced_pod("default")
    list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1))
    core.delete_namespaced_secret("s", "default")
    assert sim.request_counts() == {
        ("create", "secrets"): 1,
        ("get", "secrets"): 2,
        ("list", "pods"): 1,
        ("watch", "pods"): 1,
        ("delete", "secrets"): 1,
    }
