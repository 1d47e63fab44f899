"""How a long-running command stops: SIGTERM or SIGINT sets an Event, the command cleans up.

``scanqueue run``, ``watch``, ``exporter`` and ``sim serve`` all stop this way: the signal
handler only sets the Event (nothing else is safe in a handler), and the command's own
thread does the stopping. It must never import a command module.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def stop_on_signals() -> threading.Event:
    """Return an Event that SIGTERM and SIGINT set (from now on, in this process)."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def serve_until_signal(start: Callable[[], str], stop: Callable[[], None]) -> int:
    """Run ``start()``, print the line it returns (where it serves), wait for SIGTERM or
    SIGINT, then ``stop()``; ``stop()`` runs however it ends, a failing ``start`` included.

    The handlers are in place before ``start`` runs, so a signal at any time stops cleanly.
    Returns 0, the command's exit code.
    """
    stopping = stop_on_signals()
    try:
        print(start(), flush=True)
        stopping.wait()
    finally:
        stop()
    return 0
