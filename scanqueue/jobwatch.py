"""Collect on events: a watch on each cluster's scan Jobs sends one collect task per finished Job.

Without it a finished scan waits for the next periodic collect pass, and
every pass of a cluster runs in one worker at a time. With it, each Job that
reaches Complete or Failed is handed to whichever worker is free
(``scanqueue.collect_job`` on the cluster's queue), so collects of different
Jobs run in parallel; the worker claims the Job once (``scans.collection``),
so a collect task and the periodic pass never both store it.

Like the pod watch: list (paged), then watch from the list's
resourceVersion, resume from the last version seen, re-list on 410 Gone,
back off on errors. It runs in the watcher process, one thread per cluster.
It only reads Jobs (by our label, in the scan namespace) and sends names; it
must never read a Secret or a log, and a task it could not send is left to
the periodic pass, the safety net.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from scanqueue import config, errors, kube, manifests
from scanqueue.scans import model

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300  # the server ends a watch after this; it is resumed at once
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


def finished(job: Mapping[str, Any]) -> bool:
    """Whether a Job has reached Complete or Failed (pure)."""
    return model.job_state(job)[0] in ("complete", "failed")


def summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a collect needs of a finished Job, to send with its task (pure).

    Its name, labels, annotations (the scan request: references only, never a
    credential), creation time and status: the worker then need not read the Job
    again. Nothing of its pod template (no image pull details, no env).
    """
    metadata = job.get("metadata") or {}
    return {
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "labels", "annotations", "creationTimestamp")
            if key in metadata
        },
        "spec": {"suspend": bool((job.get("spec") or {}).get("suspend"))},
        "status": job.get("status") or {},
    }


class JobWatcher:
    """Watches one cluster's scan Jobs until ``stop``; ``send(name, summary)`` per finished Job.

    ``send`` raises ``TemporaryError`` when the broker cannot be reached; the Job
    is then left to the periodic collect pass. A Job is sent once per process
    while it exists (a re-list after 410 does not send it again).
    """

    def __init__(
        self,
        *,
        cluster: config.ClusterSettings,
        api: kube.ApiClient,
        send: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.cluster = cluster
        self._api = api
        self._send = send
        self._stop = stop
        self._timeout = watch_timeout_seconds
        self._selector = manifests.cluster_selector(cluster.name)
        self._sent: set[str] = set()
        self.relists = 0  # lists done (the first and each one after a 410), for tests and logs

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"jobs-{self.cluster.name}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """List, then watch, until stop; resume from the last version; re-list on 410."""
        version: str | None = None
        delay = BACKOFF_INITIAL_SECONDS
        where = f"scan Jobs of {self.cluster.name}"
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                for kind, job in kube.watch_jobs(
                    api=self._api,
                    namespace=self.cluster.scan_namespace,
                    label_selector=self._selector,
                    resource_version=version,
                    timeout_seconds=self._timeout,
                ):
                    if self._stop.is_set():
                        return
                    version = (job.get("metadata") or {}).get("resourceVersion") or version
                    if kind != "BOOKMARK":
                        self._apply(kind, job)
                delay = BACKOFF_INITIAL_SECONDS
            except kube.Gone:
                log.info("watch of %s: 410 Gone; listing again", where)
                version = None
                self._stop.wait(BACKOFF_INITIAL_SECONDS)
            except errors.ScanqueueError as e:
                log.warning("watch of %s: %s; again in %.1fs", where, e, delay)
                self._stop.wait(delay)
                delay = min(BACKOFF_MAX_SECONDS, delay * 2)
            except Exception:  # a bug must not end the watch; the periodic pass still collects
                log.exception("watch of %s failed; again in %.1fs", where, delay)
                version = None
                self._stop.wait(delay)
                delay = min(BACKOFF_MAX_SECONDS, delay * 2)

    def _relist(self) -> str:
        """List every scan Job; send the finished ones not sent yet; return the version."""
        seen: set[str] = set()
        version = ""
        for page, listed_at in kube.list_job_pages(
            api=self._api, namespace=self.cluster.scan_namespace, label_selector=self._selector
        ):
            version = listed_at
            for job in page:
                seen.add(str(job["metadata"]["name"]))
                self._apply("ADDED", job)
        self._sent &= seen  # Jobs gone while we were not watching
        self.relists += 1
        return version

    def _apply(self, kind: str, job: Mapping[str, Any]) -> None:
        name = str((job.get("metadata") or {}).get("name") or "")
        if not name:
            return
        if kind == "DELETED":
            self._sent.discard(name)
            return
        if name in self._sent or not finished(job):
            return
        try:
            self._send(name, summary(job))
        except errors.TemporaryError as e:
            log.warning("collect task for %s not sent (%s); the periodic pass collects it", name, e,
                        extra={"cluster": self.cluster.name, "job": name})  # fmt: skip
            return
        self._sent.add(name)
