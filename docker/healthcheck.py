"""Health check of the scanqueue image: one image, several roles, one check per role.

Docker runs this inside the container (``HEALTHCHECK``), with the container's
environment. It reads the main process's command line (PID 1, or what
docker-init/tini runs) and checks what that role must be able to do:

- ``celery ... worker``: the worker answers a ping over the broker (it is
  alive *and* consuming), addressed by its ``--hostname``; with ``--max-age N``
  also: it finished a task within the last N seconds (its heartbeat stamp,
  ``workers.heartbeat``), so a worker whose pool runs nothing is unhealthy;
- ``celery ... beat``: the broker is reachable (beat only sends); with
  ``--max-age N``: beat published a task within the last N seconds (it sends
  a heartbeat task every 10 s), so a wedged scheduler is unhealthy;
- ``celery ... flower``: ``GET /healthcheck`` answers 200 (no auth needed);
- ``scanqueue watch --metrics-port N``: ``GET /metrics`` answers 200;
- ``scanqueue exporter --port N``: ``GET /healthz`` answers 200 (not ``/metrics``,
  which may run the exporter's database queries);
- anything else (``scanqueue migrate``, a shell): healthy while it runs.

Without arguments it checks PID 1; ``healthcheck.py [--max-age N] -- CMD ...``
checks the role CMD would run (for exec probes and tests). Exit 0 healthy, 1 unhealthy, with
one line saying why. It never prints a URL,
an environment value or an exception text that could carry a password.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT = 5.0
_INIT = {"docker-init", "tini", "dumb-init"}


def main_command(proc: Path = Path("/proc")) -> list[str]:
    """The command line of the container's main process, without an init wrapper."""
    raw = (proc / "1" / "cmdline").read_bytes()
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if argv and Path(argv[0]).name in _INIT:
        argv = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    return argv


def _program(argv: Sequence[str]) -> list[str]:
    """Drop a leading ``python -m`` so ``python -m celery`` reads like ``celery``."""
    args = list(argv)
    if args and Path(args[0]).name.startswith("python") and args[1:2] == ["-m"]:
        args = args[2:]
    if args:
        args[0] = Path(args[0]).name
    return args


def option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the first of ``names`` (``--x=v`` or ``--x v`` or ``-x v``) in ``argv``."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.partition("=")[2]
    return None


def role(argv: Sequence[str]) -> str:
    """``worker``, ``beat``, ``flower``, ``watcher``, ``exporter``, ``migrate`` or ``other``."""
    args = _program(argv)
    if not args:
        return "other"
    if args[0] == "celery":
        for sub in ("worker", "beat", "flower"):
            if sub in args[1:]:
                return sub
        return "other"
    if args[0] == "scanqueue":
        if "watch" in args[1:]:
            return "watcher"
        if "exporter" in args[1:]:
            return "exporter"
        if "migrate" in args[1:]:
            return "migrate"
    return "other"


def worker_name(argv: Sequence[str], hostname: str) -> str:
    """The node name the worker answers to: ``--hostname``/``-n`` with ``%h`` expanded."""
    template = option(_program(argv), "--hostname", "-n") or "celery@%h"
    short = hostname.split(".", maxsplit=1)[0]
    return template.replace("%h", hostname).replace("%n", short).replace("%d", "")


def _http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (loopback)
            return response.status == 200, f"{url} answered {response.status}"
    except urllib.error.HTTPError as e:
        return False, f"{url} answered {e.code}"
    except OSError as e:
        return False, f"{url} unreachable ({type(e).__name__})"


def _loopback(address: str | None) -> str:
    return "127.0.0.1" if address in (None, "", "0.0.0.0", "::") else str(address)  # noqa: S104


def _fresh(who: str, did: str, key: str, max_age: float) -> tuple[bool, str]:
    """Whether the heartbeat stamp ``key`` is at most ``max_age`` seconds old, and why."""
    import time

    from scanqueue import config, dedupe
    from workers import heartbeat
    from workers.app import app, settings_of

    try:
        broker = settings_of(app).broker
        client = dedupe.client(broker.url, password=config.broker_password(broker))
        try:
            age = heartbeat.age(client, key, now=time.time())
        finally:
            client.close()
    except Exception as e:  # Redis down: nothing can be proven
        return False, f"{who}: heartbeat unreadable ({type(e).__name__})"
    if age is None:
        return False, f"{who} never {did} (no heartbeat in Redis)"
    if age > max_age:
        return False, f"{who} last {did} {age:.0f}s ago (more than {max_age:g}s)"
    return True, f"{who} {did} {age:.0f}s ago".replace(" but ", " and ")


def check(
    argv: Sequence[str], *, hostname: str | None = None, max_age: float | None = None
) -> tuple[bool, str]:
    """Check the role ``argv`` runs; return (healthy, one line saying why).

    ``max_age``: a worker or beat must also have done its work (finished,
    resp. published, a task) within that many seconds.
    """
    kind = role(argv)
    args = _program(argv)
    if kind == "flower":
        port = option(args, "--port") or "5555"
        host = _loopback(option(args, "--address"))
        return _http_ok(f"http://{host}:{port}/healthcheck")
    if kind == "watcher":
        metrics_port = option(args, "--metrics-port")
        if metrics_port is None:
            return True, "watcher without --metrics-port: healthy while it runs"
        host = _loopback(option(args, "--metrics-address"))
        return _http_ok(f"http://{host}:{metrics_port}/metrics")
    if kind == "exporter":
        port = option(args, "--port") or "9464"  # scanqueue exporter's defaults
        host = _loopback(option(args, "--address"))
        return _http_ok(f"http://{host}:{port}/healthz")
    if kind in ("worker", "beat"):
        from workers.app import app

        if kind == "beat":
            try:
                with app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=TIMEOUT)
            except Exception as e:  # any failure to connect is "unhealthy"
                return False, f"beat: broker unreachable ({type(e).__name__})"
            if max_age is None:
                return True, "beat: broker reachable"
            from workers import heartbeat

            return _fresh("beat", "published a task", heartbeat.BEAT_KEY, max_age)
        name = worker_name(argv, hostname or socket.gethostname())
        try:
            replies = app.control.ping(destination=[name], timeout=TIMEOUT)
        except Exception as e:  # broker down: the worker cannot work either
            return False, f"worker {name}: ping failed ({type(e).__name__})"
        if not any(name in reply for reply in replies):
            return False, f"worker {name} did not answer a ping within {TIMEOUT:g}s"
        if max_age is None:
            return True, f"worker {name} answered a ping"
        from workers import heartbeat

        return _fresh(f"worker {name} answered a ping but", "finished a task",
                      heartbeat.worker_key(name), max_age)  # fmt: skip
    return True, f"{kind}: healthy while it runs"


def main(argv: Sequence[str] | None = None) -> int:
    """Check PID 1's role, or the role of the command given as arguments (``-- CMD ...``)."""
    given = list(sys.argv[1:] if argv is None else argv)
    max_age = None
    if given[:1] == ["--max-age"] and len(given) > 1:
        max_age = float(given[1])
        given = given[2:]
    if given[:1] == ["--"]:
        given = given[1:]
    healthy, why = check(given or main_command(), max_age=max_age)
    print(why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
