"""Real services for the tests: Redis, PostgreSQL and a private OCI registry.

Each starts on loopback and a free port, in a temporary directory, and is
stopped by whoever started it; the processes run as ``scanqueue.processes.Process``
(own process group, gone when the test run dies). A service that cannot start raises
``ServiceError`` with its log tail: tests fail loudly, they never skip.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

from scanqueue import errors, processes
from scanqueue.sim import imagefs


class ServiceError(RuntimeError):
    """A test service could not be started; the message says why and how to fix it."""


free_port = processes.free_port


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServiceError(
            f"{binary} not found; install the Debian package {package} (make install)"
        )
    return path


def _started(process: processes.Process, port: int, what: str) -> processes.Process:
    """Start ``process``, wait until it listens on ``port``; ``ServiceError`` if it cannot."""
    process.start()
    try:
        process.wait_port(port, timeout=20)
    except errors.ScanqueueError as e:
        process.stop(5)
        raise ServiceError(f"{what} did not start: {e}") from None
    return process


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------- Redis


@dataclasses.dataclass
class RedisServer:
    """A private ``redis-server`` with no persistence, on a free loopback port."""

    directory: Path
    port: int = 0
    process: processes.Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def argv(self) -> list[str]:
        return [_require("redis-server", "redis-server"), "--bind", "127.0.0.1",
                "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--logfile", str(self.log)]  # fmt: skip

    def start(self) -> Self:
        self.port = self.port or free_port()
        process = processes.Process("redis-server", self.argv(), self.directory / "redis.out")
        self.process = _started(process, self.port, "redis-server")
        self._wait_loaded()
        return self

    def _wait_loaded(self, timeout: float = 20) -> None:
        """Ready means PING answers: a Redis with an append-only file accepts connections
        while it loads the file and answers every command with LOADING until it is done."""
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
                    return  # it answers, asking for a password: its data is loaded
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise ServiceError(
                            f"redis-server still loading its data after {timeout:.0f}s; "
                            f"its log:\n{_tail(self.log)}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)

    def restart(self) -> None:
        """Stop and start again on the same port (its data is lost: no persistence)."""
        self.stop()
        self.start()


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise ServiceError("PostgreSQL server binaries not found; install Debian's postgresql")
    return Path(dirs[-1])


@dataclasses.dataclass
class PostgresServer:
    """A private PostgreSQL cluster (initdb, trust auth, fsync off) on a free loopback port.

    As root it runs as the ``postgres`` system user, since the server refuses root.
    """

    directory: Path
    port: int = 0
    proc_user: str | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(argv)
        if self.proc_user:
            cmd = ["runuser", "-u", self.proc_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, check=False, timeout=120)

    def start(self) -> PostgresServer:
        bindir = _pg_bindir()
        if os.geteuid() == 0:
            self.proc_user = "postgres"
            shutil.chown(self.directory, user="postgres")
        if not self.data.exists():
            done = self._run(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                             "-U", "postgres", "-E", "UTF8", "--no-sync")  # fmt: skip
            if done.returncode != 0:
                raise ServiceError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        self.port = self.port or free_port()
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")  # fmt: skip
        done = self._run(str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                         "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        if done.returncode != 0:
            raise ServiceError(f"postgres did not start: {done.stderr.decode()}\n{_tail(self.log)}")
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            self._run(str(_pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def crash(self) -> None:
        """Stop at once, as a crash would, losing no committed transaction.

        This server runs with ``synchronous_commit=off`` (speed), so an immediate stop would
        also drop its last commits, which a production server (``synchronous_commit`` on)
        keeps: a test would then see rows vanish that a real crash leaves. They are written
        out first; only what is in flight is lost, as in production.
        """
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        self.stop("immediate")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str, template: str = "template1") -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ registry


@dataclasses.dataclass
class Registry:
    """Debian's ``docker-registry`` (distribution 2.8) with htpasswd or token auth.

    ``users`` maps user name to password (htpasswd mode). For token auth pass
    ``token`` = dict(realm=..., service=..., issuer=..., rootcertbundle=PATH).
    Its stderr is the access log (``self.log``): each request with the
    authenticated user name.
    """

    directory: Path
    users: dict[str, str] = dataclasses.field(default_factory=dict)
    token: dict[str, str] | None = None
    anonymous: bool = False  # no auth at all: anyone may pull and push (a public registry)
    port: int = 0
    process: processes.Process | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def start(self) -> Registry:
        binary = _require("docker-registry", "docker-registry")
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        auth: str
        if self.anonymous:
            auth = "  {}\n"
        elif self.token is not None:
            auth = "  token:\n" + "".join(f"    {k}: {v}\n" for k, v in self.token.items())
        else:
            htpasswd = self.directory / "htpasswd"
            self.write_htpasswd()
            auth = f"  htpasswd:\n    realm: scanqueue-test\n    path: {htpasswd}\n"
        config = self.directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  formatter: text\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.directory / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + ("" if self.anonymous else f"auth:\n{auth}")
        )
        process = processes.Process("docker-registry", [binary, "serve", str(config)], self.log)
        self.process = _started(process, self.port, "docker-registry")
        return self

    def write_htpasswd(self) -> None:
        """(Re)write the htpasswd file from ``self.users``; the registry re-reads it on change."""
        lines = []
        for user, password in self.users.items():
            done = subprocess.run([_require("htpasswd", "apache2-utils"), "-Bbn", user, password],
                                  capture_output=True, check=True, text=True)  # fmt: skip
            lines.append(done.stdout.strip())
        (self.directory / "htpasswd").write_text("\n".join(lines) + "\n")

    def set_password(self, user: str, password: str) -> None:
        """Change (or add) a user's password; the registry picks it up on its next request."""
        self.users[user] = password
        self.write_htpasswd()
        # distribution reloads htpasswd when the file's mtime changes
        t = time.time() + 1
        os.utime(self.directory / "htpasswd", (t, t))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)

    def access_log(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self, path: str, user: str | None = None, password: str | None = None) -> int:
        """HTTP status of ``GET path`` (for fixtures' own checks), with optional basic auth."""
        request = urllib.request.Request(f"http://{self.host}{path}")
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        request.add_header("Accept", MANIFEST_ACCEPT)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def push(self, repository: str, tag: str, *, content: str | None = None,
             user: str | None = None, password: str | None = None,
             contents: Mapping[str, bytes] | None = None) -> str:  # fmt: skip
        """Build a one-layer image on the fly, push it with skopeo, return its digest.

        ``content`` goes into the image's ``/etc/scanqueue-test``; different
        content gives a different digest. ``contents`` (``imagefs.files(...)``:
        os-release, package databases) replaces the default Alpine os-release.
        Credentials default to the first user.
        """
        if user is None and self.users:
            user, password = next(iter(self.users.items()))
        return push_image(f"docker://{self.host}/{repository}:{tag}",
                          content=content if content is not None else f"{repository}:{tag}",
                          creds=f"{user}:{password}" if user else None,
                          contents=contents)  # fmt: skip


MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


def push_image(destination: str, *, content: str, creds: str | None = None,
               authfile: str | None = None,
               contents: Mapping[str, bytes] | None = None) -> str:  # fmt: skip
    """Push a tiny image to ``destination`` (``docker://host/repo:tag``); return its digest.

    ``contents`` (path -> bytes, for example ``imagefs.files(...)``) gives the
    image real package metadata; without it the image is an Alpine os-release.
    """
    skopeo = _require("skopeo", "skopeo")
    with tempfile.TemporaryDirectory(prefix="sq-image-") as tmp:
        root = Path(tmp, "root")
        (root / "etc").mkdir(parents=True)
        if contents is None:
            contents = imagefs.files("alpine 3.19.1")
        imagefs.write(root, contents)
        (root / "etc" / "scanqueue-test").write_text(content)
        layer = Path(tmp, "layer.tar")
        # fixed mtimes so that the same content gives the same digest
        subprocess.run(["tar", "--mtime=2020-01-01", "--sort=name", "--owner=0", "--group=0",
                        "-C", str(root), "-cf", str(layer), "."], check=True)  # fmt: skip
        digest_file = Path(tmp, "digest")
        cmd = [skopeo, "copy", "--quiet", "--dest-tls-verify=false",
               "--digestfile", str(digest_file), f"tarball:{layer}", destination]  # fmt: skip
        if creds:
            cmd[2:2] = ["--dest-creds", creds]
        if authfile:
            cmd[2:2] = ["--dest-authfile", authfile]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise ServiceError(f"skopeo copy to {destination} failed: {done.stderr.strip()}")
        return digest_file.read_text().strip()


def skopeo_digest(reference: str, *, creds: str | None = None) -> str:
    """The digest ``skopeo inspect`` reports for ``reference`` (``docker://...``)."""
    cmd = [_require("skopeo", "skopeo"), "inspect", "--tls-verify=false", reference]
    if creds:
        cmd[2:2] = ["--creds", creds]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ServiceError(f"skopeo inspect {reference} failed: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["Digest"])


def dockerconfigjson(registry: str, user: str, password: str) -> str:
    """``.dockerconfigjson`` for one registry, as kubectl create secret docker-registry writes."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"username": user, "password": password, "auth": auth}}})


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{hashlib.sha1(os.urandom(8)).hexdigest()[:8]}"
