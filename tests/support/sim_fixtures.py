"""Fixtures for the Kubernetes API emulator: ``sim`` (one per test) and ``sim_factory`` (several).

A ``SimCluster`` is a started ``scanqueue.sim.emulator.Emulator`` plus what a
test needs to reach it like a real cluster: ``url``, ``kubeconfig`` (a file
the official client and scanqueue's config can load), ``api_client()`` (an
official ``kubernetes.client.ApiClient``, closed after the test), ``core()``
and ``batch()`` API objects, and ``registry`` (the session's private
registry, which the emulator's kubelet really pulls from). Every other
attribute is the emulator's own: ``sim.create(...)``, ``sim.faults``,
``sim.set_report(...)``, ``sim.request_counts()``, ``sim.wait_for(...)``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanqueue.sim import emulator as emulator_mod
from tests.support import services


class SimCluster:
    def __init__(
        self, emulator: emulator_mod.Emulator, directory: Path, registry: services.Registry | None
    ) -> None:
        self.emulator = emulator
        self.directory = directory
        self.registry = registry
        self.kubeconfig = emulator.kubeconfig(directory / "kubeconfig")
        self._clients: list[Any] = []

    @property
    def url(self) -> str:
        return self.emulator.url

    def api_client(self) -> Any:
        client = self.emulator.api_client()
        self._clients.append(client)
        return client

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client())

    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api_client())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.emulator, name)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.emulator.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_sim(registry: services.Registry | None = None, **kwargs: Any) -> SimCluster:
    directory = Path(tempfile.mkdtemp(prefix="sq-sim-"))
    emulator = emulator_mod.Emulator(**kwargs).start()
    return SimCluster(emulator, directory, registry)


@pytest.fixture
def sim(registry: services.Registry) -> Iterator[SimCluster]:
    """A fresh emulator (Kubernetes 1.30, one node ``node-1``) that pulls from ``registry``."""
    cluster = start_sim(registry)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def sim_factory(registry: services.Registry) -> Iterator[Callable[..., SimCluster]]:
    """Start more emulators (``Emulator`` keyword arguments); all stopped after the test."""
    started: list[SimCluster] = []

    def start(**kwargs: Any) -> SimCluster:
        cluster = start_sim(registry, **kwargs)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.close()
