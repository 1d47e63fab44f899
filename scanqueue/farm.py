"""``scanqueue run`` and ``scanqueue demo``: the whole farm as local processes, one command.

Why: ``make run`` must start everything a farm is (migrations, the watcher, a
Celery worker, Celery beat, Flower) against the clusters of
``scanqueue.toml``, or, when there is no configuration and no kubeconfig, on
the embedded default (``demo_env``: the demo scenario on the emulator plus a
private registry), and say which in its first line.

How: migrations run in this process; every other role is a subprocess started
by its ordinary command line (``roles``: ``python -m scanqueue.cli watch``,
``python -m celery -A workers.app worker|beat|flower``), each a
``processes.Process`` in its own process group with its log in the state
directory. ``run`` supervises them (``supervisor``: a role that dies is named
and restarted with backoff; a crash loop stops the farm with exit code 1)
until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM) or, for the demo,
until every digest of the demo cluster has a finished scan; then it stops
them all, group by group (SIGTERM, then SIGKILL), so no process outlives it.

What it must never do:
- import Celery or the workers package (it starts them by command line);
- start Flower without basic auth, unless the caller explicitly allowed it
  for local use (loopback only);
- print a credential: the banner names where Flower's password is, not the
  password; database and broker URLs are shown without their password.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from scanqueue import config, errors, logs, processes, roles, supervisor

FLOWER_USER = "scanqueue"  # user of the Flower password generated for the embedded default
LOOPBACK = ("127.0.0.1", "localhost", "::1")
Mode = Literal["configured", "embedded"]


@dataclasses.dataclass(frozen=True)
class Options:
    """How ``run`` starts the farm (the CLI flags)."""

    demo: bool = False  # embedded default even when a configuration exists
    until_scanned: bool = False  # stop once every digest of the demo cluster has a finished scan
    timeout_seconds: float = 600.0  # until_scanned: give up after this long
    concurrency: int = 2  # Celery worker processes
    flower_address: str = "127.0.0.1"  # Flower listens here
    flower_port: int = 5555  # 0: a free port
    flower_unauthenticated: bool = False  # allow Flower without basic auth (loopback only)
    worker_metrics_port: int = 0  # 0: a free port
    exporter_port: int = 0  # vulnerability metrics (scanqueue exporter); 0: a free port
    watcher_metrics_port: int = 0  # 0: a free port
    state_dir: Path | None = None  # kept; None: a temporary directory removed at the end
    private_services: bool = False  # embedded default: own Redis and Postgres, whatever answers
    log_level: str = "INFO"
    # when a role that died is restarted, and when the farm gives up
    restarts: supervisor.Policy = dataclasses.field(default_factory=supervisor.Policy)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What ``run`` ended with."""

    exit_code: int
    database_url: str  # where the results are (for ``scanqueue report``)
    cluster: str | None  # the demo cluster's name in embedded mode
    scanned: int = 0  # demo: digests with a successful scan
    unfinished: tuple[str, ...] = ()  # demo: digests without one, with why


def mode(
    settings: config.Settings, *, environ: Mapping[str, str], home: Path | None = None
) -> tuple[Mode, str]:
    """Which farm to run, and the reason in words for the banner's first line.

    ``configured`` when the settings name clusters; ``embedded`` when there is
    no configuration file and no kubeconfig. A kubeconfig without a
    configuration is an error: scanning someone's cluster is never a default.
    """
    if settings.clusters:
        names = ", ".join(c.name for c in settings.clusters)
        return "configured", f"the clusters of {settings.source}: {names}"
    if settings.source != "defaults":
        raise errors.ConfigError(
            f"{settings.source} names no cluster; add a [[clusters]] table "
            "(docs/configuration.md) or run `scanqueue demo`"
        )
    kubeconfig = _kubeconfig(environ, home if home is not None else Path.home())
    if kubeconfig is not None:
        raise errors.ConfigError(
            f"no scanqueue.toml, but a kubeconfig exists ({kubeconfig}); the farm does not scan "
            "a cluster it was not told to. Write scanqueue.toml with [[clusters]] "
            f'kubeconfig = "{kubeconfig}" (docs/configuration.md), or pass --demo'
        )
    return "embedded", (
        "no scanqueue.toml and no kubeconfig: running the embedded default "
        "(the bundled demo cluster on the Kubernetes API emulator, a local private registry)"
    )


def _kubeconfig(environ: Mapping[str, str], home: Path) -> Path | None:
    for item in environ.get("KUBECONFIG", "").split(os.pathsep):
        if item and Path(item).is_file():
            return Path(item)
    default = home / ".kube" / "config"
    return default if default.is_file() else None


def flower_auth(
    environ: Mapping[str, str], *, embedded: bool, unauthenticated: bool, address: str
) -> tuple[str | None, str]:
    """Flower's ``user:password`` (None: no auth) and how a person logs in, for the banner.

    ``FLOWER_BASIC_AUTH`` wins. Without it: the embedded default generates a
    password (the caller stores it in a 0600 file); ``unauthenticated`` (or
    ``SQ_FLOWER_UNAUTHENTICATED=1``) runs Flower open, on loopback only;
    otherwise ``ConfigError``.
    """
    given = environ.get("FLOWER_BASIC_AUTH", "")
    if given:
        pairs = [pair.partition(":") for pair in given.split(",")]
        users = [user for user, _, _ in pairs]
        if not all(user and sep and password for user, sep, password in pairs):
            raise errors.ConfigError("FLOWER_BASIC_AUTH must be user:password[,user2:password2]")
        return given, f"basic auth, users from FLOWER_BASIC_AUTH ({', '.join(users)})"
    allowed = unauthenticated or environ.get("SQ_FLOWER_UNAUTHENTICATED", "") in ("1", "true")
    if allowed:
        if address not in LOOPBACK:
            raise errors.ConfigError(
                f"Flower without authentication may listen on loopback only, not {address}; "
                "set FLOWER_BASIC_AUTH=user:password"
            )
        return None, "NO authentication (allowed for local use); anyone on this machine sees it"
    if embedded:
        return f"{FLOWER_USER}:{secrets.token_urlsafe(18)}", "generated"
    raise errors.ConfigError(
        "FLOWER_BASIC_AUTH is not set: Flower shows every task to whoever reaches it. "
        "Set FLOWER_BASIC_AUTH=user:password, or pass --flower-unauthenticated "
        "(SQ_FLOWER_UNAUTHENTICATED=1) for local use on 127.0.0.1"
    )


# ------------------------------------------------------------------------ roles


def commands(
    *,
    settings: config.Settings,
    state: Path,
    options: Options,
    flower_port: int,
    worker_metrics_port: int,
    watcher_metrics_port: int,
    exporter_port: int = 0,
) -> dict[str, list[str]]:
    """The command line of each role, by name: worker, beat, watcher, flower, exporter."""
    return {
        "worker": roles.worker(
            queues=roles.queues(settings),
            node=f"scanqueue-{os.getpid()}@%h",
            concurrency=options.concurrency,
            log_level=options.log_level,
            metrics_port=worker_metrics_port,
        ),
        "beat": roles.beat(schedule=state / "beat-schedule", log_level=options.log_level),
        "watcher": roles.watcher(log_level=options.log_level, metrics_port=watcher_metrics_port),
        "flower": roles.flower(address=options.flower_address, port=flower_port),
        "exporter": roles.exporter(port=exporter_port),
    }


def _importable_workers(env: dict[str, str]) -> None:
    """Make sure the subprocesses can import ``workers`` (a source checkout run from elsewhere)."""
    import importlib.util

    if importlib.util.find_spec("workers") is not None:
        return
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "workers" / "app.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)


def _port(wanted: int) -> int:
    return wanted or processes.free_port()


# ------------------------------------------------------------------------------ run


def run(
    options: Options,
    *,
    stop: threading.Event,
    environ: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
    before_stop: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Start the farm, supervise it until ``stop`` (or the demo is scanned), stop it all.

    Prints the banner to ``out`` (default stdout): the mode in the first line,
    then where Flower is and how to log in, the metrics endpoints, the logs,
    and how to run ``scanqueue report``; then each death and restart of a
    role. ``before_stop(summary)`` runs while everything still runs (the demo
    prints its report from the demo's own database). Raises ``ConfigError``
    for settings that cannot run (no cluster, Flower without auth),
    ``PermanentError`` when a role exits while starting.
    """
    env = dict(os.environ if environ is None else environ)
    stream = out if out is not None else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    which, reason, settings = _choose(options, config.load(environ=env), env)
    auth, how = flower_auth(
        env,
        embedded=which == "embedded",
        unauthenticated=options.flower_unauthenticated,
        address=options.flower_address,
    )
    _check_port_free(options.flower_address, options.flower_port)
    say(f"scanqueue: {reason}")
    state = _state_directory(options)
    world = None
    started: list[processes.Process] = []
    try:
        if which == "embedded":
            from scanqueue import demo_env

            world = demo_env.start(
                state, settings=settings, private_services=options.private_services, say=say
            )
            env.update(demo_env.environment(world))
            for name in ("SCANQUEUE_DATABASE_URL", "SCANQUEUE_BROKER_URL"):
                env.pop(name, None)  # the settings file says which, started or found
            settings = config.load(world.settings_path, environ={})
        _check_services(settings)
        _migrate(settings, say)
        if auth is not None and how == "generated":
            how = f"basic auth: user {FLOWER_USER}, password in {_password_file(state, auth)}"
        banner = _start_roles(options, settings=settings, state=state, env=env, auth=auth,
                              started=started)  # fmt: skip
        flower_url, ports, log_dir = banner
        say(f"  flower       {flower_url}  ({how})")
        say(f"  metrics      worker http://127.0.0.1:{ports['worker']}/metrics, "
            f"watcher http://127.0.0.1:{ports['watcher']}/metrics")  # fmt: skip
        say(f"  findings     http://127.0.0.1:{ports['exporter']}/metrics  "
            "(scanqueue exporter: vulnerability metrics)")  # fmt: skip
        say(f"  logs         {log_dir}/{{worker,beat,watcher,flower,exporter}}.log")
        say(f"  report       SCANQUEUE_CONFIG={_config_path(settings, env)} scanqueue report"
            "   (also: --by image, --format csv)")  # fmt: skip
        say("  stop         Ctrl-C" if not options.until_scanned else
            "  until        every image of the demo cluster has a finished scan")  # fmt: skip
        summary = _supervise(
            options, settings=settings, started=started, world=world, stop=stop, say=say
        )
        if before_stop is not None:
            before_stop(summary)
        return summary
    finally:
        for process in reversed(started):
            process.stop()
        if world is not None:
            world.stop()
        if options.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)


def _choose(
    options: Options, settings: config.Settings, env: Mapping[str, str]
) -> tuple[Mode, str, config.Settings]:
    """Which farm (``mode``, or the embedded default for ``--demo``), why, and its settings."""
    if options.demo:
        reason = (
            f"{'demo' if options.until_scanned else '--demo'}: running the embedded default "
            "(the bundled demo cluster on the Kubernetes API emulator, a local private registry)"
        )
        return "embedded", reason, dataclasses.replace(settings, clusters=())
    which, reason = mode(settings, environ=env)
    if options.until_scanned and which != "embedded":
        raise errors.ConfigError("waiting until scanned is for the demo cluster only")
    return which, reason, settings


def _state_directory(options: Options) -> Path:
    if options.state_dir is None:
        state = Path(tempfile.mkdtemp(prefix="scanqueue-run-"))
        # a private Postgres runs as another user: it may enter, not list
        os.chmod(state, 0o711)  # noqa: S103
        return state
    options.state_dir.mkdir(parents=True, exist_ok=True)
    return options.state_dir


def _password_file(state: Path, auth: str) -> Path:
    """Flower's generated password in a 0600 file of the state directory."""
    secret_file = state / "flower-password"
    secret_file.touch(0o600)
    secret_file.chmod(0o600)  # before the password goes in, whatever was there
    secret_file.write_text(auth.partition(":")[2] + "\n")
    return secret_file


def _start_roles(
    options: Options,
    *,
    settings: config.Settings,
    state: Path,
    env: Mapping[str, str],
    auth: str | None,
    started: list[processes.Process],
) -> tuple[str, dict[str, int], Path]:
    """Start worker, beat, Flower, then the watcher and the exporter (appended to ``started``
    as they start), each waited for; return Flower's URL, the ports and the log directory."""
    flower_port = _port(options.flower_port)
    ports = {"worker": _port(options.worker_metrics_port),
             "watcher": _port(options.watcher_metrics_port),
             "exporter": _port(options.exporter_port)}  # fmt: skip
    argv = commands(settings=settings, state=state, options=options, flower_port=flower_port,
                    worker_metrics_port=ports["worker"],
                    watcher_metrics_port=ports["watcher"],
                    exporter_port=ports["exporter"])  # fmt: skip
    log_dir = state / "logs"
    log_dir.mkdir(exist_ok=True)
    metrics_dir = state / "worker-metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    base_env = {k: v for k, v in env.items() if k not in ("FLOWER_BASIC_AUTH",)}
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    _importable_workers(base_env)
    envs = {
        "worker": {**base_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        "watcher": base_env,
        "beat": base_env,
        "flower": {**base_env, **_flower_env(auth)},
        "exporter": base_env,
    }
    # consumers first: the watcher publishes only once a worker and Flower are up
    for name in ("worker", "beat", "flower"):
        process = processes.Process(name, argv[name], log_dir / f"{name}.log", env=envs[name])
        started.append(process.start())
    worker, beat, flower = started
    worker.wait_ready(lambda: roles.WORKER_READY in worker.output(), what="its 'ready.'")
    beat.wait_ready(lambda: roles.BEAT_READY in beat.output(), what="waiting for its start")
    flower_url = f"http://{_url_host(options.flower_address)}:{flower_port}"
    flower.wait_ready(lambda: processes.http_ok(f"{flower_url}/healthcheck"),
                      what="/healthcheck")  # fmt: skip
    watcher = processes.Process("watcher", argv["watcher"], log_dir / "watcher.log",
                                env=envs["watcher"])  # fmt: skip
    started.append(watcher.start())
    watcher_url = f"http://127.0.0.1:{ports['watcher']}/metrics"
    watcher.wait_ready(lambda: processes.http_ok(watcher_url), what="its metrics endpoint")
    exporter = processes.Process("exporter", argv["exporter"], log_dir / "exporter.log",
                                 env=envs["exporter"])  # fmt: skip
    started.append(exporter.start())
    exporter_url = f"http://127.0.0.1:{ports['exporter']}/metrics"
    exporter.wait_ready(lambda: processes.http_ok(exporter_url), what="its /metrics")
    return flower_url, ports, log_dir


def _check_port_free(address: str, port: int) -> None:
    """Refuse early, with the way out, when Flower's port is taken (0 always works)."""
    if port == 0:
        return
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as e:
            raise errors.ConfigError(
                f"Flower cannot listen on {address}:{port} ({e.strerror}); pass "
                "--flower-port with another port, or 0 for a free one"
            ) from None


def _url_host(address: str) -> str:
    if address in ("0.0.0.0", ""):  # noqa: S104 - mapping "all" to a URL one can open
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address


def _config_path(settings: config.Settings, env: Mapping[str, str]) -> str:
    return env.get("SCANQUEUE_CONFIG") or settings.source


def _flower_env(auth: str | None) -> dict[str, str]:
    if auth is None:
        # Flower 2 refuses its API without auth unless told; the caller allowed local use
        return {"FLOWER_UNAUTHENTICATED_API": "true"}
    return {"FLOWER_BASIC_AUTH": auth}


def _check_services(settings: config.Settings) -> None:
    from scanqueue import demo_services

    if not demo_services.redis_answers(
        settings.broker.url, password=config.broker_password(settings.broker)
    ):
        raise errors.TemporaryError(
            f"Redis does not answer at broker.url ({logs.redact(settings.broker.url)}, "
            f"from {settings.source}); start it (make services) or fix the URL"
        )


def _migrate(settings: config.Settings, say: Callable[[str], None]) -> None:
    from scanqueue import store

    with store.connect(
        settings.database.url, password=config.database_password(settings.database)
    ) as conn:
        applied = store.migrate(conn)
        conn.commit()
        versions = store.applied_versions(conn)
    done = f"applied {len(applied)}" if applied else "up to date"
    say(f"  migrations   {done}, schema version {versions[-1] if versions else 0}")


def _supervise(
    options: Options,
    *,
    settings: config.Settings,
    started: Sequence[processes.Process],
    world: object,
    stop: threading.Event,
    say: Callable[[str], None],
) -> RunSummary:
    digests: set[str] = set()
    cluster = None
    if world is not None:
        from scanqueue import demo_env

        assert isinstance(world, demo_env.World)
        digests = set(world.digests.values())
        cluster = demo_env.CLUSTER
    deadline = time.monotonic() + options.timeout_seconds
    last = ""
    keeper = supervisor.Supervisor(started, say=say, policy=options.restarts)
    while not stop.wait(0.5):
        try:
            keeper.check()
        except supervisor.CrashLoopError as e:
            say(f"scanqueue: stopping the farm: {e}")
            return RunSummary(1, settings.database.url, cluster)
        if not digests:
            continue
        done, failed, pending = _progress(
            settings.database.url, digests, config.database_password(settings.database)
        )
        line = f"  progress     {len(done)}/{len(digests)} images scanned" + (
            f", {len(failed)} failed" if failed else ""
        )
        if line != last:
            say(line)
            last = line
        if not options.until_scanned:
            continue
        if not pending:
            code = 0 if not failed else 1
            return RunSummary(code, settings.database.url, cluster, len(done), tuple(failed))
        if time.monotonic() > deadline:
            waiting = tuple(f"{d}: no finished scan yet" for d in pending)
            say(
                f"scanqueue: the demo cluster was not scanned within {options.timeout_seconds:.0f}s"
            )
            return RunSummary(1, settings.database.url, cluster, len(done), (*failed, *waiting))
    say("scanqueue: stopping")
    return RunSummary(0, settings.database.url, cluster)


def _progress(
    url: str, digests: set[str], password: str | None = None
) -> tuple[set[str], list[str], set[str]]:
    """(succeeded digests, "digest: status: why" of failed ones, digests not finished yet)."""
    from scanqueue import store

    succeeded: set[str] = set()
    failed: dict[str, str] = {}
    try:
        with store.connect(url, password=password) as conn:
            rows = conn.execute(
                """SELECT DISTINCT ON (digest) digest, status, error FROM scans
                    WHERE digest = ANY(%s)
                    ORDER BY digest, coalesce(finished_at, started_at) DESC, id DESC""",
                (sorted(digests),),
            ).fetchall()
    except errors.TemporaryError:
        return succeeded, [], set(digests)
    for digest, status, error in rows:
        if status == "succeeded":
            succeeded.add(str(digest))
        elif status in ("failed", "timeout", "refused"):
            failed[str(digest)] = f"{digest}: {status}: {error}"
    return succeeded, sorted(failed.values()), digests - succeeded - set(failed)
