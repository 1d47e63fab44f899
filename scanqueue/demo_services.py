"""The local services of the demo world: registries, Redis and PostgreSQL on loopback.

Each is a real server started as a ``processes.Process`` in a directory of its own, on a
free 127.0.0.1 port, and stopped by ``stop()``: Debian's ``docker-registry`` (htpasswd, or
anonymous; images pushed with ``skopeo``), a ``redis-server`` without persistence, a
private PostgreSQL cluster. ``redis_and_postgres`` decides whether the demo uses the ones
already running or starts its own.

What it must never do: listen anywhere but 127.0.0.1, or put the registry password in
argv, a log or a message (htpasswd reads it from stdin; skopeo from a 0600 auth file).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from scanqueue import config, errors, logs, processes


class DemoError(errors.PermanentError):
    """A part of the demo world could not start; the message says which and how to fix it."""


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise DemoError(
            f"{binary} not found; install the Debian package {package} "
            "(scripts/ensure-system.sh does)"
        )
    return path


def _service_env(directory: Path) -> dict[str, str]:
    """The environment of a demo service: ours, plus where it lives (``ps e`` shows it even
    when the service rewrites its process title, as redis-server does)."""
    return {**os.environ, "SQ_DEMO_SERVICE_DIR": str(directory)}


def _started(process: processes.Process, port: int, what: str) -> processes.Process:
    """Start ``process`` and wait until it listens on ``port``; ``DemoError`` if it cannot."""
    process.start()
    try:
        process.wait_port(port)
    except errors.ScanqueueError as e:
        process.stop()
        raise DemoError(f"{what} did not start: {e}") from None
    return process


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass
class Registry:
    """One ``docker-registry`` process; htpasswd auth for ``user``, or none when anonymous."""

    directory: Path
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    port: int = 0
    process: processes.Process | None = dataclasses.field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def start(self) -> Registry:
        binary = _require("docker-registry", "docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or processes.free_port()
        auth = ""
        if self.user:
            htpasswd = self.directory / "htpasswd"
            done = subprocess.run(
                [_require("htpasswd", "apache2-utils"), "-iBn", self.user],
                input=self.password,
                capture_output=True,
                text=True,
                check=False,
            )  # the password goes through stdin (-i), never argv
            if done.returncode != 0:
                raise DemoError(f"htpasswd failed: {done.stderr.strip()}")
            htpasswd.write_text(done.stdout)
            htpasswd.chmod(0o600)
            auth = f"auth:\n  htpasswd:\n    realm: scanqueue-demo\n    path: {htpasswd}\n"
        settings = self.directory / "config.yml"
        settings.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  formatter: text\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.directory / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
        )
        self.process = _started(
            processes.Process("docker-registry", [binary, "serve", str(settings)], self.log,
                              env=_service_env(self.directory)),
            self.port, "docker-registry",
        )  # fmt: skip
        return self

    def push(self, repository: str, tag: str, *, layer: bytes) -> str:
        """Push a one-layer image (``layer``: a tar) with skopeo; return its digest."""
        skopeo = _require("skopeo", "skopeo")
        work = self.directory / "push"
        work.mkdir(exist_ok=True)
        tarball = work / f"{repository.replace('/', '_')}-{tag}.tar"
        tarball.write_bytes(layer)
        digest_file = work / "digest"
        command = [skopeo, "copy", "--quiet", "--dest-tls-verify=false",
                   "--digestfile", str(digest_file)]  # fmt: skip
        authfile = work / "auth.json"
        if self.user:
            # an auth file (0600, removed right after) rather than --dest-creds: argv is
            # visible to every user of the machine
            authfile.touch(0o600)
            authfile.write_text(json.dumps({"auths": {self.host: {"auth": _basic(self)}}}))
            command += ["--dest-authfile", str(authfile)]
        command += [f"tarball:{tarball}", f"docker://{self.host}/{repository}:{tag}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        finally:
            authfile.unlink(missing_ok=True)
            tarball.unlink(missing_ok=True)
        if done.returncode != 0:
            raise DemoError(f"skopeo copy to {self.host}/{repository}:{tag} failed: "
                            f"{done.stderr.strip()[-300:]}")  # fmt: skip
        return digest_file.read_text().strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(15)


def _basic(registry: Registry) -> str:
    import base64

    return base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()


# ------------------------------------------------------------------- Redis, Postgres


@dataclasses.dataclass
class Redis:
    """A private ``redis-server`` without persistence: the demo's queues end with the demo."""

    directory: Path
    port: int = 0
    process: processes.Process | None = dataclasses.field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = _require("redis-server", "redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = processes.free_port()
        log = self.directory / "redis.log"
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(log)]  # fmt: skip
        self.process = _started(
            processes.Process("redis-server", argv, self.directory / "redis.out",
                              env=_service_env(self.directory)),
            self.port, "redis-server",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(15)


@dataclasses.dataclass
class Postgres:
    """A private PostgreSQL cluster (trust auth on loopback, fsync off) in ``directory``.

    The server is a direct child (no ``pg_ctl``), so that it gets SIGINT (fast
    shutdown) when the launcher dies. As root it runs as the ``postgres`` system
    user, since it refuses root.
    """

    directory: Path
    port: int = 0
    user: str | None = None
    process: processes.Process | None = dataclasses.field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/scanqueue"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=120, cwd="/"
        )  # cwd: the postgres user may not enter ours

    def start(self) -> Postgres:
        import pwd

        from scanqueue import store

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
        if not found:
            raise DemoError("PostgreSQL server binaries not found; install Debian's postgresql")
        bindir = Path(found[-1])
        self.directory.mkdir(parents=True, exist_ok=True)
        uid = gid = None
        if os.geteuid() == 0:
            self.user = "postgres"
            account = pwd.getpwnam(self.user)
            uid, gid = account.pw_uid, account.pw_gid
            shutil.chown(self.directory, user=self.user)
        data, log = self.directory / "data", self.directory / "postgres.log"
        done = self._run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--no-sync")  # fmt: skip
        if done.returncode != 0:
            raise DemoError(f"initdb failed: {done.stderr.strip()[-500:]}")
        self.port = processes.free_port()
        self.process = processes.Process(
            "postgres",
            [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            log, env=_service_env(self.directory), uid=uid, gid=gid,
            # SIGINT: fast shutdown, connections are cut
            death_signal=signal.SIGINT, stop_signal=signal.SIGINT,
        ).start()  # fmt: skip
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            if not self.process.running:
                raise DemoError(f"PostgreSQL {self.process.exit_reason()}:\n{self.process.tail()}")
            try:
                with store.connect(admin) as conn:
                    conn.autocommit = True
                    conn.execute(b"CREATE DATABASE scanqueue")
                return self
            except errors.TemporaryError as e:
                if time.monotonic() > deadline:
                    raise DemoError(f"PostgreSQL did not accept connections: {e}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(30)


def redis_answers(url: str, *, password: str | None = None) -> bool:
    """Whether a Redis answers PING at ``url`` (with ``password``, kept apart from the URL)."""
    import redis

    client = redis.Redis.from_url(
        url, password=password or None, socket_connect_timeout=1, socket_timeout=2
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def postgres_problem(url: str) -> str | None:
    """Why ``url`` cannot hold the demo's data, or None when it can.

    A server that answers but lacks the database gets it created (the default
    ``scanqueue`` database of a fresh system PostgreSQL).
    """
    from scanqueue import store

    try:
        with store.connect(url):
            return None
    except errors.TemporaryError as e:
        problem = str(e)
    if "does not exist" not in problem:
        return problem
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    try:
        with store.connect(admin) as conn:
            conn.autocommit = True
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return None
    except Exception as e:  # any failure here means: use a private server
        return f"{problem}; creating it failed: {type(e).__name__}"


def redis_and_postgres(
    directory: Path,
    settings: config.Settings,
    started: list[Any],
    say: Any,
    *,
    private: bool,
) -> tuple[str, str]:
    """The Redis and PostgreSQL URLs of the demo: ``settings``' when they answer; private
    ones in ``directory`` (appended to ``started``) when they do not and the URLs are the
    defaults, or when ``private``. An explicit URL that does not answer: ``TemporaryError``.
    """
    defaults = config.Settings()
    redis_url = settings.broker.url
    if not private and redis_answers(redis_url):
        say(f"  redis        {logs.redact(redis_url)} (already running)")
    elif not private and redis_url != defaults.broker.url:
        raise errors.TemporaryError(
            f"Redis at {logs.redact(redis_url)} (SCANQUEUE_BROKER_URL) does not answer; "
            "start it or unset the variable to let the demo start its own"
        )
    else:
        redis = Redis(directory / "redis").start()
        started.append(redis)
        redis_url = redis.url
        why = "private services asked for" if private else f"none on {defaults.broker.url}"
        say(f"  redis        {redis_url} (started for this run: {why})")
    database_url = settings.database.url
    problem = "private services asked for" if private else postgres_problem(database_url)
    if problem is None:
        say(f"  postgres     {logs.redact(database_url)} (already running)")
    elif not private and database_url != defaults.database.url:
        raise errors.TemporaryError(
            f"PostgreSQL at {logs.redact(database_url)} (SCANQUEUE_DATABASE_URL) is not "
            f"usable: {problem}"
        )
    else:
        postgres = Postgres(directory / "postgres").start()
        started.append(postgres)
        database_url = postgres.url
        say(f"  postgres     {database_url} (started for this run: {problem})")
    return redis_url, database_url
