"""One pod stream: list a scope, then watch it, resuming and re-listing until stopped.

The watch resumes from the last resourceVersion it saw (bookmarks requested) when the
connection drops, lists again on ``410 Gone``, and backs off with jitter on errors and
API 429/5xx. What a list or an event means is the caller's (``relist``, ``apply``): this
module only keeps the stream going.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from scanqueue import discovery, errors, kube, metrics
from scanqueue.watcher.pacing import Backoff, WatchOptions
from scanqueue.watcher.picture import Scope

log = logging.getLogger(__name__)


def follow(
    scope: Scope,
    *,
    cluster: str,
    api: kube.ApiClient,
    options: WatchOptions,
    stop: threading.Event,
    relist: Callable[[Scope], str],
    apply: Callable[[str, Mapping[str, Any]], None],
) -> None:
    """List, then watch ``scope`` until stop; resume, re-list on 410, back off on errors.

    ``relist(scope)`` lists and returns the resourceVersion to watch from; ``apply(type,
    pod)`` takes each event but bookmarks. Never raises: a bug must not end the watch.
    """
    backoff = Backoff(options.backoff_initial_seconds, options.backoff_max_seconds)
    version: str | None = None
    where = scope or "all namespaces"
    bookmarks = metrics.WATCH_EVENTS.labels(cluster, "BOOKMARK")
    while not stop.is_set():
        try:
            if version is None:
                version = relist(scope)
                backoff.reset()
            for kind, obj in kube.watch_pods(
                api=api,
                namespace=scope,
                resource_version=version,
                timeout_seconds=options.watch_timeout_seconds,
                label_selector=discovery.NOT_MANAGED_SELECTOR,
            ):
                if stop.is_set():
                    return
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "BOOKMARK":  # only a newer resourceVersion to resume from
                    bookmarks.inc()
                else:
                    apply(kind, obj)
            backoff.reset()
            metrics.WATCH_RESTARTS.labels(cluster, "timeout").inc()
        except kube.Gone:
            metrics.WATCH_GONE.labels(cluster).inc()
            metrics.WATCH_RESTARTS.labels(cluster, "gone").inc()
            log.info("watch of %s in %s: 410 Gone; listing again", where, cluster)
            version = None
            stop.wait(backoff.next() / 4)  # a re-list is due, but not in a hot loop
        except errors.ScanqueueError as e:
            metrics.WATCH_RESTARTS.labels(cluster, "error").inc()
            delay = backoff.next(e.delay if isinstance(e, errors.TemporaryError) else None)
            level = logging.WARNING if isinstance(e, errors.TemporaryError) else logging.ERROR
            log.log(level, "watch of %s in %s: %s; again in %.1fs", where, cluster, e, delay)
            stop.wait(delay)
        except Exception:  # a bug must not end the watch of a cluster
            metrics.WATCH_RESTARTS.labels(cluster, "error").inc()
            delay = backoff.next()
            log.exception("watch of %s in %s failed; again in %.1fs", where, cluster, delay)
            version = None
            stop.wait(delay)
