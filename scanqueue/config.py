"""Settings: grouped frozen dataclasses, built once from a TOML file and the environment.

Sources, later wins: the defaults below, the TOML file (``SCANQUEUE_CONFIG``,
default ``./scanqueue.toml``; a missing default file is fine, a missing named
file is an error), then ``SCANQUEUE_<SECTION>_<KEY>`` environment variables
(``SCANQUEUE_DATABASE_URL``, ``SCANQUEUE_SCAN_RESCAN_INTERVAL_SECONDS``...).

Parsing is strict: an unknown key or a value of the wrong type is a
``ConfigError`` naming the key and the file (or variable). Nothing here
connects anywhere; settings are passed down explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from scanqueue import errors

ScanMode = Literal["auto", "registry", "node"]
Severity = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_TRIVY_TAG = re.compile(r":v?(\d+)\.(\d+)(?:\.\d+)?$")  # the tag of a trivy_image, if a version
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = "postgresql://postgres@127.0.0.1:5432/scanqueue"  # libpq URL
    pool_min_size: int = 1  # connections kept open per process
    pool_max_size: int = 4  # connections at most per process
    retention_scans_per_digest: int = 5  # scans kept per image digest; older ones pruned
    retain_gone_days: int = 30  # inventory rows of containers gone this long are pruned; 0 = never
    password_file: str = ""  # file holding the password (url then has none); empty = none


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    url: str = "redis://127.0.0.1:6379/0"  # Celery broker and dedupe store (Redis)
    result_backend: str = ""  # Celery result backend; empty = same Redis as the broker
    visibility_timeout_seconds: int = 3600  # redelivery after a worker dies; > hard limit
    password_file: str = ""  # file holding the Redis password (url then has none); empty = none
    ca_file: str = ""  # CA bundle (PEM) for rediss:// URLs; empty = the system CAs


@dataclasses.dataclass(frozen=True)
class ScanSettings:
    rescan_interval_seconds: int = 86400  # a digest scanned this recently is fresh
    job_deadline_seconds: int = 600  # activeDeadlineSeconds of a scan Job
    job_ttl_seconds: int = 3600  # ttlSecondsAfterFinished: the cluster's own safety net
    collect_interval_seconds: float = 5.0  # how often finished Jobs are collected
    sweep_interval_seconds: float = 60.0  # how often leftovers are swept
    sweep_margin_seconds: int = 120  # a Job older than deadline + margin is left behind
    inflight_ttl_seconds: int = 1800  # in-flight key lifetime, renewed while its scan lasts
    # Celery limits of the submit/collect tasks. Ordered job deadline < soft < hard <
    # broker visibility timeout, so that no limit fires while a longer one still waits.
    soft_time_limit_seconds: int = 900  # SoftTimeLimitExceeded raised in the task
    hard_time_limit_seconds: int = 1200  # the pool process is killed; must exceed soft
    verify_with_registry: bool = True  # check candidates against the registry before a Job
    allow_anonymous: bool = True  # try an anonymous pull after the candidates
    registry_timeout_seconds: float = 10.0  # connect+read timeout towards registries
    registry_ca_bundle: str = ""  # CA bundle for registry TLS; empty = system default
    insecure_registries: tuple[str, ...] = ()  # HOST[:PORT] reached over plain http
    # How long a digest that failed in a cluster waits there (scanqueue.failures).
    backoff_credential_seconds: int = 300  # no credential accepted (401/403): retried after this
    backoff_transient_seconds: int = 120  # timeout, pod not started: doubles per failure
    backoff_failed_seconds: int = 21600  # Trivy or its report failed: retried after this


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    name: str  # short DNS label; names the Celery queue scan.<name>
    kubeconfig: str = ""  # path to a kubeconfig; empty with in_cluster = true
    in_cluster: bool = False  # use the pod's service account instead of a kubeconfig
    context: str = ""  # kubeconfig context; empty = current-context
    namespaces: tuple[str, ...] = ()  # namespaces to watch; empty = all
    exclude_namespaces: tuple[str, ...] = ()  # namespaces never watched
    scan_namespace: str = "scanqueue-scans"  # where scan Jobs and Secrets live
    scan_mode: ScanMode = "auto"  # auto | registry | node
    trivy_image: str = "aquasec/trivy:0.76.0"  # image of the scan container
    trivy_server: str = ""  # Trivy server URL (client/server mode); empty = local DB
    max_inflight: int = 10  # scan Jobs in flight in this cluster at most
    trivy_server_token_secret: str = ""  # Secret in scan_namespace, key "token": TRIVY_TOKEN
    scan_user_namespaces: bool = False  # node-mode pods get hostUsers: false (user namespaces)
    scan_cpu_request: str = "100m"  # CPU reserved for one scan pod (Kubernetes quantity)
    scan_memory_request: str = "256Mi"  # memory reserved for one scan pod
    scan_cpu_limit: str = "1"  # CPU at most, per scan pod
    scan_memory_limit: str = "2Gi"  # memory at most, per scan pod; a local Trivy DB needs ~1Gi
    scan_ephemeral_storage_limit: str = "4Gi"  # scratch space at most, per scan pod
    ca_bundle_configmap: str = ""  # ConfigMap in scan_namespace, key ca.crt: CAs scan pods trust
    java_db_repository: str = ""  # Trivy Java DB image (air-gapped mirror); empty = Trivy's
    trivy_db_repository: str = ""  # Trivy vulnerability DB image (mirror); empty = Trivy's


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    min_severity: Severity = "CRITICAL"  # alert on new findings at this severity or above
    fixable_only: bool = True  # alert only on findings that have a fixed version
    generic_urls: tuple[str, ...] = ()  # webhooks receiving scanqueue's own JSON (one POST each)
    alertmanager_urls: tuple[str, ...] = ()  # Alertmanager alert endpoints (.../api/v2/alerts)
    slack_urls: tuple[str, ...] = ()  # Slack (or Mattermost) incoming-webhook URLs
    timeout_seconds: float = 5.0  # connect and read timeout of one POST
    max_attempts: int = 8  # POSTs tried per notification before it becomes a dead letter
    retry_base_seconds: float = 10.0  # the first retry waits this long; doubled each time
    retry_max_seconds: float = 600.0  # retries are at most this far apart
    interval_seconds: float = 10.0  # beat plans new alerts and resends lost ones this often
    max_age_seconds: int = 86400  # a scan older than this when planned alerts nothing
    max_findings: int = 20  # findings listed in one notification; the rest are counted
    keep_sent_days: int = 30  # delivered notifications (and planned outbox rows) deleted after this
    keep_dead_days: int = 90  # dead letters (deliveries given up) deleted after this; 0 = never
    webhooks_file: str = ""  # TOML file (a mounted Secret) adding generic/alertmanager/slack_urls


@dataclasses.dataclass(frozen=True)
class RescanSettings:
    # Rescans from stored SBOMs (docs/rescans.md): no Job, no credential, no pull.
    enabled: bool = False  # keep SBOMs of full scans and rescan from them (workers run trivy)
    interval_seconds: int = 21600  # evaluated longer ago than this: rescan; < scan.rescan_interval
    trivy_server: str = ""  # Trivy server URL rescans use; empty = the local DB in cache_dir
    trivy_server_token_file: str = ""  # file holding that server's token; empty = none
    cache_dir: str = ""  # Trivy cache directory holding db/ (local mode), read-only
    trivy_binary: str = ""  # path of trivy; empty = next to Python, else on PATH
    plan_interval_seconds: float = 60.0  # how often beat looks for due digests
    max_per_plan: int = 200  # evaluations started per plan pass at most (the rate limit)
    min_trivy_version: str = "0.50.0"  # SBOMs listed by an older Trivy get a full scan
    timeout_seconds: float = 120.0  # one trivy run (convert, sbom) at most


@dataclasses.dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    scan: ScanSettings = ScanSettings()
    alerts: AlertSettings = AlertSettings()
    rescan: RescanSettings = RescanSettings()
    clusters: tuple[ClusterSettings, ...] = ()
    source: str = "defaults"  # where the settings came from, for messages

    def cluster(self, name: str) -> ClusterSettings:
        """Return the cluster called ``name``; raise ``ConfigError`` naming the known ones."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise errors.ConfigError(f"no cluster named {name!r} in {self.source}; known: {known}")


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "broker": BrokerSettings,
    "scan": ScanSettings,
    "alerts": AlertSettings,
    "rescan": RescanSettings,
}


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from ``path`` (or ``SCANQUEUE_CONFIG``) and the environment.

    Raises ``ConfigError`` for an unreadable file, an unknown key or a bad value.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or "SCANQUEUE_CONFIG" in env
    file = Path(path if path is not None else env.get("SCANQUEUE_CONFIG", "scanqueue.toml"))
    data: dict[str, Any] = {}
    source = "defaults"
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise errors.ConfigError(f"{file}: cannot read settings: {e}") from e
        source = str(file)
    elif explicit:
        raise errors.ConfigError(f"{file}: settings file not found (named by SCANQUEUE_CONFIG)")
    return from_mapping(data, environ=env, source=source)


def from_mapping(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "<mapping>",
) -> Settings:
    """Build settings from an already parsed TOML document plus ``SCANQUEUE_*`` variables."""
    unknown = sorted(set(data) - set(_SECTIONS) - {"clusters"})
    if unknown:
        raise errors.ConfigError(
            f"{source}: unknown section or key {unknown[0]!r}; "
            f"expected one of {sorted([*_SECTIONS, 'clusters'])}"
        )
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise errors.ConfigError(f"{source}: [{name}] must be a table")
        values = {k: _convert(cls, k, v, f"{source}: {name}.{k}") for k, v in raw.items()}
        sections[name] = values
    for var, text in (environ or {}).items():
        if not var.startswith("SCANQUEUE_") or var in _ENV_IGNORED:
            continue
        section, _, key = var[len("SCANQUEUE_") :].lower().partition("_")
        if section not in _SECTIONS or not key:
            raise errors.ConfigError(f"unknown environment variable {var}; {_ENV_HELP}")
        sections[section][key] = _convert(_SECTIONS[section], key, text, var, from_env=True)
    raw_clusters = data.get("clusters", [])
    if not isinstance(raw_clusters, list):
        raise errors.ConfigError(f"{source}: clusters must be an array of tables ([[clusters]])")
    clusters = tuple(_cluster(c, i, source) for i, c in enumerate(raw_clusters))
    names = [c.name for c in clusters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise errors.ConfigError(f"{source}: cluster name {duplicates[0]!r} is used twice")
    settings = Settings(
        database=DatabaseSettings(**sections["database"]),
        broker=BrokerSettings(**sections["broker"]),
        scan=ScanSettings(**sections["scan"]),
        alerts=_with_webhooks_file(AlertSettings(**sections["alerts"])),
        rescan=RescanSettings(**sections["rescan"]),
        clusters=clusters,
        source=source,
    )
    _check(settings)
    return settings


def redis_tls(broker: BrokerSettings, url: str) -> dict[str, Any] | None:
    """TLS options for a ``rediss://`` ``url`` (redis-py and kombu take the same keys).

    None for ``redis://``. The server's certificate is always verified, against
    ``broker.ca_file`` when set, else the system CAs. An ACL user goes in the URL
    (``rediss://USER@HOST:PORT/0``), its password in ``broker.password_file``.
    """
    if not url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if broker.ca_file:
        options["ssl_ca_certs"] = broker.ca_file
    return options


_ENV_IGNORED = frozenset({"SCANQUEUE_CONFIG"})
_ENV_HELP = (
    "expected SCANQUEUE_<SECTION>_<KEY> with section database, broker, scan, alerts or rescan"
)


def _cluster(raw: Any, index: int, source: str) -> ClusterSettings:
    where = f"{source}: clusters[{index}]"
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"{where} must be a table")
    if "name" not in raw:
        raise errors.ConfigError(f"{where} has no name")
    values = {
        k: _convert(ClusterSettings, k, v, f"{where}.{k}", allow_required=True)
        for k, v in raw.items()
    }
    cluster = ClusterSettings(**values)
    if not _NAME.match(cluster.name):
        raise errors.ConfigError(
            f"{where}.name {cluster.name!r} must be a lowercase DNS label (a-z, 0-9, '-')"
        )
    if not cluster.in_cluster and not cluster.kubeconfig:
        raise errors.ConfigError(f"{where}: set kubeconfig = PATH or in_cluster = true")
    if cluster.in_cluster and cluster.kubeconfig:
        raise errors.ConfigError(f"{where}: kubeconfig and in_cluster exclude each other")
    if cluster.max_inflight < 1:
        raise errors.ConfigError(f"{where}.max_inflight must be at least 1")
    for key in (
        "scan_cpu_request",
        "scan_memory_request",
        "scan_cpu_limit",
        "scan_memory_limit",
        "scan_ephemeral_storage_limit",
    ):
        if not _QUANTITY.match(getattr(cluster, key)):
            raise errors.ConfigError(
                f"{where}.{key} {getattr(cluster, key)!r} is not a Kubernetes quantity "
                "(e.g. 500m, 2, 256Mi, 4Gi)"
            )
    _check_server_url(cluster.trivy_server, f"{where}.trivy_server",
                      "name a Secret holding it in trivy_server_token_secret")  # fmt: skip
    if cluster.ca_bundle_configmap and not _SUBDOMAIN.match(cluster.ca_bundle_configmap):
        raise errors.ConfigError(f"{where}.ca_bundle_configmap must be a ConfigMap name")
    version = _TRIVY_TAG.search(cluster.trivy_image.rpartition("/")[2])
    if cluster.ca_bundle_configmap and version and (int(version[1]), int(version[2])) < (0, 70):
        raise errors.ConfigError(
            f"{where}: ca_bundle_configmap needs Trivy's --cacert (Trivy 0.70 or later); "
            f"trivy_image {cluster.trivy_image!r} is older: set a newer trivy_image"
        )
    return cluster


def _check(settings: Settings) -> None:
    scan = settings.scan
    where = settings.source
    for name in (
        "rescan_interval_seconds",
        "job_deadline_seconds",
        "inflight_ttl_seconds",
        "backoff_credential_seconds",
        "backoff_transient_seconds",
        "backoff_failed_seconds",
    ):
        if getattr(scan, name) <= 0:
            raise errors.ConfigError(f"{where}: scan.{name} must be positive")
    if not scan.job_deadline_seconds < scan.soft_time_limit_seconds:
        raise errors.ConfigError(
            f"{where}: scan.job_deadline_seconds must be below scan.soft_time_limit_seconds"
        )
    if not scan.soft_time_limit_seconds < scan.hard_time_limit_seconds:
        raise errors.ConfigError(
            f"{where}: scan.soft_time_limit_seconds must be below scan.hard_time_limit_seconds"
        )
    if not scan.hard_time_limit_seconds < settings.broker.visibility_timeout_seconds:
        raise errors.ConfigError(
            f"{where}: broker.visibility_timeout_seconds must exceed "
            "scan.hard_time_limit_seconds, or Redis redelivers running tasks"
        )
    if settings.database.retain_gone_days < 0:
        raise errors.ConfigError(f"{where}: database.retain_gone_days must be 0 (never) or more")
    if settings.database.pool_min_size > settings.database.pool_max_size:
        raise errors.ConfigError(f"{where}: database.pool_min_size exceeds pool_max_size")
    for name, section in (("database", settings.database), ("broker", settings.broker)):
        if section.password_file:
            if _url_has_password(section.url):
                raise errors.ConfigError(
                    f"{where}: {name}.url carries a password and {name}.password_file is set; "
                    f"remove the password from {name}.url"
                )
            # a missing or empty file is an error now, not at the first connection
            read_password_file(section.password_file, f"{name}.password_file")
    _check_alerts(settings.alerts, where)
    _check_rescan(settings.rescan, scan, where)


def _check_rescan(rescan: RescanSettings, scan: ScanSettings, where: str) -> None:
    for name in ("interval_seconds", "plan_interval_seconds", "max_per_plan", "timeout_seconds"):
        if getattr(rescan, name) <= 0:
            raise errors.ConfigError(f"{where}: rescan.{name} must be positive")
    if rescan.enabled and not rescan.interval_seconds < scan.rescan_interval_seconds:
        raise errors.ConfigError(
            f"{where}: rescan.interval_seconds must be below scan.rescan_interval_seconds "
            "(past that, the watcher scans a digest in full)"
        )
    if not re.match(r"^v?\d+\.\d+(\.\d+)?$", rescan.min_trivy_version):
        raise errors.ConfigError(
            f"{where}: rescan.min_trivy_version {rescan.min_trivy_version!r} is not a version "
            "like 0.50.0"
        )
    _check_server_url(rescan.trivy_server, f"{where}: rescan.trivy_server",
                      "put it in the file named by rescan.trivy_server_token_file")  # fmt: skip
    # only with rescans on: deploy/42-worker.yaml names the token file of an optional Secret
    # (the Trivy server's, absent from a farm without one), so it may be missing until then
    if rescan.enabled and rescan.trivy_server_token_file:
        read_password_file(rescan.trivy_server_token_file, "rescan.trivy_server_token_file")


def database_password(database: DatabaseSettings) -> str | None:
    """The database password from ``database.password_file`` (``None``: the URL or libpq's
    own sources say it); ``ConfigError`` if the file is unreadable or empty."""
    return read_password_file(database.password_file, "database.password_file")


def broker_password(broker: BrokerSettings) -> str | None:
    """The Redis password from ``broker.password_file``, as ``database_password``."""
    return read_password_file(broker.password_file, "broker.password_file")


def read_password_file(path: str, key: str) -> str | None:
    """The secret in the file ``path`` (one trailing newline dropped); ``None`` for no path.

    Read when a connection is made, so a rotated file is picked up by new
    connections. Raises ``ConfigError`` naming ``key`` and the file (never
    its content) when it cannot be read or is empty.
    """
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise errors.ConfigError(
            f"{key}: cannot read {path} ({reason}); mount the secret file there or fix the path"
        ) from None
    secret = text[:-1] if text.endswith("\n") else text
    if secret.endswith("\r"):
        secret = secret[:-1]
    if not secret:
        raise errors.ConfigError(f"{key}: {path} is empty; it must hold the password")
    return secret


def _check_server_url(url: str, key: str, token_hint: str) -> None:
    """Refuse a Trivy server URL with user information (``user:secret@host``): a URL goes
    to trivy's arguments, scan rows, logs and errors, where a secret must never be. Trivy
    authenticates to its server with a token, which has its own place (``token_hint``).
    The message never repeats the URL."""
    rest = url.partition("://")[2] if "://" in url else url  # "user:pw@host:4954" too
    authority = rest.partition("/")[0].partition("?")[0].partition("#")[0]
    if "@" in authority:
        raise errors.ConfigError(
            f"{key} carries user information (user:password@); Trivy authenticates to its "
            f"server with a token: remove it from the URL and {token_hint}"
        )


def _url_has_password(url: str) -> bool:
    authority = url.partition("://")[2].partition("/")[0]
    return "@" in authority and ":" in authority.rpartition("@")[0]


_WEBHOOK_KEYS = ("generic_urls", "alertmanager_urls", "slack_urls")


def _with_webhooks_file(alerts: AlertSettings) -> AlertSettings:
    """``alerts`` plus the URL lists of ``alerts.webhooks_file`` (webhook URLs are secrets:
    they belong in a mounted Secret, not in the settings file). Errors name the file and
    the key, never a value."""
    if not alerts.webhooks_file:
        return alerts
    where = f"alerts.webhooks_file {alerts.webhooks_file}"
    try:
        data = tomllib.loads(Path(alerts.webhooks_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise errors.ConfigError(f"{where}: cannot read it ({reason})") from None
    except tomllib.TOMLDecodeError:
        raise errors.ConfigError(f"{where}: not valid TOML") from None
    unknown = sorted(set(data) - set(_WEBHOOK_KEYS))
    if unknown:
        raise errors.ConfigError(f"{where}: unknown key {unknown[0]!r}; expected {_WEBHOOK_KEYS}")
    added: dict[str, tuple[str, ...]] = {}
    for key in _WEBHOOK_KEYS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.ConfigError(f"{where}: {key} must be a list of strings")
        added[key] = (*getattr(alerts, key), *value)
    return dataclasses.replace(
        alerts,
        generic_urls=added["generic_urls"],
        alertmanager_urls=added["alertmanager_urls"],
        slack_urls=added["slack_urls"],
    )


def _check_alerts(alerts: AlertSettings, where: str) -> None:
    from scanqueue import alerts as alerting  # the one webhook URL parser

    for name in ("timeout_seconds", "retry_base_seconds", "interval_seconds", "max_findings",
                 "keep_sent_days"):  # fmt: skip
        if getattr(alerts, name) <= 0:
            raise errors.ConfigError(f"{where}: alerts.{name} must be positive")
    if alerts.keep_dead_days < 0:
        raise errors.ConfigError(f"{where}: alerts.keep_dead_days must be 0 (never) or more")
    if alerts.max_attempts < 1:
        raise errors.ConfigError(f"{where}: alerts.max_attempts must be at least 1")
    if alerts.retry_max_seconds < alerts.retry_base_seconds:
        raise errors.ConfigError(f"{where}: alerts.retry_max_seconds is below retry_base_seconds")
    for key in ("generic_urls", "alertmanager_urls", "slack_urls"):
        for i, url in enumerate(getattr(alerts, key)):
            try:
                alerting.parse_webhook(key.removesuffix("_urls"), i, url)
            except errors.PermanentError as e:
                raise errors.ConfigError(f"{where}: alerts.{key}[{i}]: {e}") from None


def _convert(
    cls: type[Any],
    key: str,
    value: Any,
    where: str,
    *,
    from_env: bool = False,
    allow_required: bool = False,
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise errors.ConfigError(f"{where}: unknown key; expected one of {sorted(fields)}")
    hint = typing.get_type_hints(cls)[key]
    try:
        return _coerce(hint, value, from_env=from_env)
    except (TypeError, ValueError) as e:
        raise errors.ConfigError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, *, from_env: bool) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if origin in (types.UnionType, typing.Union):
        raise TypeError("unsupported setting type")
    if hint is bool:
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if from_env and isinstance(value, str):
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if from_env and isinstance(value, str):
            return float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {hint!r}")
