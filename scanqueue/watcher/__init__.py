"""The watch loop: every running container recorded, one scan task per digest across the farm.

One ``ClusterWatcher`` per cluster (``cluster``): stream threads (``streams``) list, then
watch the pods of each scope and fold them into an in-memory picture (``picture``); a
flusher writes the inventory (``inventory``) and claims, then publishes, the digests not
decided yet (``publishing``), once for the whole farm. ``runner.run`` is the watcher
process (with a ``jobwatch.JobWatcher`` per cluster); ``pacing`` holds its options and
backoff.

What it must never do: publish a task for a digest another watcher holds, let one slow or
broken cluster block another (each has its own threads and queue), or carry a secret's
value anywhere (ScanRequests name secrets only). A bad pod or a failing service is logged
and retried; the loop keeps running until ``stop`` is set.
"""

from __future__ import annotations

from scanqueue.watcher.cluster import ClusterWatcher
from scanqueue.watcher.pacing import Backoff, WatchOptions
from scanqueue.watcher.runner import run

__all__ = ["Backoff", "ClusterWatcher", "WatchOptions", "run"]
