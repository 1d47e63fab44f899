"""The embedded default of ``scanqueue run`` and ``scanqueue demo``: a demo world on loopback.

Why: a newcomer with no cluster and no configuration should see the whole farm
scan something real in one command. This module builds that something: a
private registry (Debian's ``docker-registry`` with htpasswd) and a public one
(no auth) on free loopback ports, the demo images pushed into them with
``skopeo``, the Kubernetes API emulator in this process loaded with the bundled
demo scenario (pull secrets holding the registry's credential, pods running
the pushed digests), and Redis/PostgreSQL of its own when none answers on the
default URLs.

What it must never do:
- run when the user has a configuration or a kubeconfig (``farm`` decides);
- listen anywhere but 127.0.0.1;
- print or log the registry password: it lives in the htpasswd file (bcrypt),
  in the emulator's pull secrets and in nothing else; ``World`` does not show it.

It lives outside ``scanqueue/sim/`` (another engineer owns the emulator) but
is demo-only too: production modules never import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scanqueue import config, errors, processes

CLUSTER = "demo"  # the demo cluster's name, hence the queue scan.demo
SCAN_NAMESPACE = "scanqueue-scans"
REGISTRY_USER = "demo"
# repository:tag -> what goes into the image (distinct content, distinct digest)
PRIVATE_IMAGES = ("team-a/web:1.0", "payments/api:2.3", "team-b/reporter:5", "vendor/cache:7")
PUBLIC_IMAGE = "library/busybox:1.36"
# The packages each demo image carries, as Trivy finds them (imagefs.files arguments). The
# bundled DB (scanqueue/sim/data/advisories.yaml) has advisories for some of them: the demo
# report shows every severity but UNKNOWN, fixable and unfixable findings, and a clean image.
DEMO_IMAGES: dict[str, dict[str, Any]] = {
    "team-a/web:1.0": {
        "os_release": "alpine 3.19.1",
        "packages": ["libcrypto3 3.1.4-r5 openssl", "libssl3 3.1.4-r5 openssl",
                     "busybox 1.36.1-r15", "musl 1.2.4-r2", "zlib 1.3.1-r0"],
    },
    "payments/api:2.3": {
        "os_release": "debian 12.5",
        "packages": ["libssl3 3.0.11-1~deb12u2 openssl", "libc6 2.36-9+deb12u4 glibc",
                     "perl-base 5.36.0-7+deb12u1 perl", "zlib1g 1:1.2.13.dfsg-1 zlib",
                     "libuuid1 2.38.1-5+b1 util-linux", "mount 2.38.1-5+b1 util-linux",
                     "bash 5.2.15-2+b2"],
        "pip": ["requests 2.31.0", "urllib3 2.2.1", "jinja2 3.1.4", "idna 3.7"],
    },
    "team-b/reporter:5": {
        "os_release": "debian 12.5",
        "packages": ["libc6 2.36-9+deb12u10 glibc", "libblkid1 2.38.1-5+b1 util-linux",
                     "zlib1g 1:1.2.13.dfsg-1 zlib"],
    },
    "vendor/cache:7": {
        "os_release": "alpine 3.19.1",
        "packages": ["busybox 1.36.1-r15", "musl 1.2.4-r2", "zlib 1.3.1-r0"],
    },
    PUBLIC_IMAGE: {"os_release": "alpine 3.19.1", "packages": ["busybox 1.36.1-r29",
                                                               "musl 1.2.4-r3"]},
}  # fmt: skip


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

    def push(self, repository: str, tag: str, *, content: str) -> str:
        """Push a one-layer image holding ``content`` and the package metadata of
        ``DEMO_IMAGES`` with skopeo; return its digest."""
        skopeo = _require("skopeo", "skopeo")
        work = self.directory / "push"
        work.mkdir(exist_ok=True)
        layer = work / f"{repository.replace('/', '_')}-{tag}.tar"
        layer.write_bytes(_layer(content, DEMO_IMAGES.get(f"{repository}:{tag}")))
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
        command += [f"tarball:{layer}", f"docker://{self.host}/{repository}:{tag}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        finally:
            authfile.unlink(missing_ok=True)
            layer.unlink(missing_ok=True)
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


def _layer(content: str, packages: dict[str, Any] | None = None) -> bytes:
    """A reproducible tar layer: os-release, package metadata (``DEMO_IMAGES`` entry) and
    one file with ``content``."""
    from scanqueue.sim import imagefs  # the demo side, like the emulator it starts

    files = imagefs.files(**(packages or {"os_release": "alpine 3.19.1"}))
    files["etc/scanqueue-demo"] = (content + "\n").encode()
    return imagefs.layer(files)


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


# ---------------------------------------------------------------------------- world


@dataclasses.dataclass
class World:
    """Everything the embedded default started; ``stop()`` ends it all."""

    directory: Path
    settings_path: Path
    kubeconfig: Path
    registry: Registry
    public: Registry
    redis_url: str
    database_url: str
    digests: dict[str, str]  # image reference as the pods name it -> digest
    emulator: Any = dataclasses.field(repr=False)
    services: list[Any] = dataclasses.field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop the emulator, the registries and any Redis/Postgres started here."""
        with contextlib.suppress(Exception):
            self.emulator.stop()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()


def write_settings(
    path: Path,
    *,
    database_url: str,
    redis_url: str,
    kubeconfig: Path,
    insecure: list[str],
    trivy_server: str = "",
) -> Path:
    """The demo's scanqueue.toml: one cluster, plain-http loopback registries, brisk timings,
    scans in client/server mode against ``trivy_server`` when given."""
    insecure_list = ", ".join(f'"{h}"' for h in insecure)
    path.write_text(
        "# written by scanqueue run/demo for the embedded default; removed when it stops\n"
        f'[database]\nurl = "{database_url}"\n\n'
        f'[broker]\nurl = "{redis_url}"\n\n'
        "[scan]\n"
        "job_deadline_seconds = 120\n"
        "soft_time_limit_seconds = 150\n"
        "hard_time_limit_seconds = 180\n"
        "collect_interval_seconds = 1.0\n"
        "sweep_interval_seconds = 30.0\n"
        f"insecure_registries = [{insecure_list}]\n\n"
        "[[clusters]]\n"
        f'name = "{CLUSTER}"\n'
        f'kubeconfig = "{kubeconfig}"\n'
        f'scan_namespace = "{SCAN_NAMESPACE}"\n'
        + (f'trivy_server = "{trivy_server}"\n' if trivy_server else "")
    )
    path.chmod(0o600)
    config.load(path, environ={})  # what we wrote must be valid settings
    return path


def start(
    directory: Path,
    *,
    settings: config.Settings,
    private_services: bool = False,
    say: Any = print,
) -> World:
    """Start the demo world in ``directory``; ``say(line)`` reports each step.

    Redis and Postgres: the ones of ``settings`` when they answer; when they do
    not and the URLs are the defaults, private ones in ``directory``; when the
    URLs were set explicitly (``SCANQUEUE_*``), their failure is an error.
    ``private_services``: always private ones, whatever answers.
    Raises ``DemoError`` (or ``TemporaryError`` for an explicit URL that does
    not answer); whatever started before the failure is stopped.
    """
    from scanqueue.sim import emulator as emulator_mod
    from scanqueue.sim import scenario

    started: list[Any] = []
    try:
        redis_url, database_url = _services(
            directory, settings, started, say, private=private_services
        )
        registry = Registry(
            directory / "registry", user=REGISTRY_USER, password=secrets.token_urlsafe(18)
        ).start()
        started.append(registry)
        public = Registry(directory / "public-registry").start()
        started.append(public)
        say(f"  registry     {registry.host} (htpasswd, user {REGISTRY_USER}) and a public one "
            f"on {public.host}")  # fmt: skip
        digests: dict[str, str] = {}
        for image in PRIVATE_IMAGES:
            repository, tag = image.split(":")
            digests[f"{registry.host}/{image}"] = registry.push(
                repository, tag, content=f"scanqueue demo {image}"
            )
        repository, tag = PUBLIC_IMAGE.split(":")
        digests[f"{public.host}/{PUBLIC_IMAGE}"] = public.push(
            repository, tag, content=f"scanqueue demo {PUBLIC_IMAGE}"
        )
        say(f"  images       {len(digests)} pushed with skopeo")
        emulator = emulator_mod.Emulator(name=CLUSTER, trivy_dir=directory / "trivy")
        emulator.start()
        started.append(emulator)
        # the nodes' own login to the private registry (node mode pulls no Secret), and one
        # Trivy server on the bundled DB for the farm's client/server scans
        emulator.trivy.node_auth[registry.host] = (registry.user, registry.password)
        trivy_server = emulator.trivy_server()
        say(f"  trivy        {trivy_server} (trivy server, the bundled offline DB)")
        loaded = scenario.load(
            variables={
                "REGISTRY": registry.host,
                "REGISTRY_USER": registry.user,
                "REGISTRY_PASSWORD": registry.password,
                "PUBLIC_IMAGE": f"{public.host}/{PUBLIC_IMAGE}",
            }
        )
        applied = scenario.apply(emulator, loaded, digests=digests, resolve=False)
        kubeconfig = emulator.kubeconfig(directory / "kubeconfig")
        say(f"  cluster      {CLUSTER}: the bundled demo scenario on the Kubernetes API emulator "
            f"at {emulator.url} ({len(applied.pods)} pods)")  # fmt: skip
        settings_path = write_settings(
            directory / "scanqueue.toml",
            database_url=database_url,
            redis_url=redis_url,
            kubeconfig=kubeconfig,
            insecure=[registry.host, public.host],
            trivy_server=trivy_server,
        )
        return World(
            directory=directory,
            settings_path=settings_path,
            kubeconfig=kubeconfig,
            registry=registry,
            public=public,
            redis_url=redis_url,
            database_url=database_url,
            digests=dict(applied.digests),
            emulator=emulator,
            services=[s for s in started if s is not emulator],
        )
    except BaseException:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                service.stop()
        raise


def _services(
    directory: Path,
    settings: config.Settings,
    started: list[Any],
    say: Any,
    *,
    private: bool,
) -> tuple[str, str]:
    defaults = config.Settings()
    redis_url = settings.broker.url
    if not private and redis_answers(redis_url):
        say(f"  redis        {_no_password(redis_url)} (already running)")
    elif not private and redis_url != defaults.broker.url:
        raise errors.TemporaryError(
            f"Redis at {_no_password(redis_url)} (SCANQUEUE_BROKER_URL) does not answer; "
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
        say(f"  postgres     {_no_password(database_url)} (already running)")
    elif not private and database_url != defaults.database.url:
        raise errors.TemporaryError(
            f"PostgreSQL at {_no_password(database_url)} (SCANQUEUE_DATABASE_URL) is not "
            f"usable: {problem}"
        )
    else:
        postgres = Postgres(directory / "postgres").start()
        started.append(postgres)
        database_url = postgres.url
        say(f"  postgres     {database_url} (started for this run: {problem})")
    return redis_url, database_url


def _no_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def environment(world: World) -> Mapping[str, str]:
    """What the farm's processes need in their environment to use the demo world."""
    return {"SCANQUEUE_CONFIG": str(world.settings_path)}
