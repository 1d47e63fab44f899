"""How one emulator behaves: a frozen value given to each part that needs it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EmulatorOptions:
    """Fixed when the emulator is built; the server, the controllers and the kubelet read it."""

    kube_version: str = "1.30"  # the API version served and validated against
    real_pull: bool = True  # False: scan pods succeed without pulling (benchmarks)
    watch_timeout: float = 1800.0  # default server-side watch timeout, seconds
    bookmark_interval: float = 5.0  # seconds between watch bookmarks
    job_backoff_seconds: float = 0.1  # first retry delay of a failed Job pod
    pull_workers: int = 8  # scan pods pulling from registries at the same time
