"""The watcher's in-memory picture of a cluster: what runs in each pod, and since when.

Stream threads fold events into it; the flusher turns it into inventory rows and scan
decisions. Values only: no I/O here.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from scanqueue import discovery

PodKey = tuple[str, str]  # (namespace, name)
Running = tuple[discovery.ScanRequest, ...]  # containers of a pod that have a digest
Scope = str | None  # a namespace, or None for all namespaces


@dataclasses.dataclass
class Pod:
    """One pod in the picture."""

    seen_at: datetime
    requests: tuple[discovery.ScanRequest, ...]  # containers that run (have a digest)
