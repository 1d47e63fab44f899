"""The ``scanqueue`` command.

Each subcommand is a ``_cmd_*`` function taking the parsed arguments and
returning the exit code. Exit codes: 0 success, 1 unexpected failure,
2 bad input (usage, unreadable file, invalid reference), 3 refused by the
other side (e.g. no credential accepted). Errors print one line to stderr,
never a credential value. Heavy modules are imported inside the command so
that ``scanqueue --help`` stays fast and the emulator stays out of production
import paths.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import scanqueue
from scanqueue import config, errors

if TYPE_CHECKING:
    from scanqueue import credentials

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except errors.ConfigError as e:
        print(f"scanqueue: configuration error: {e}", file=sys.stderr)
        return 2
    except errors.PermanentError as e:
        print(f"scanqueue: {e}", file=sys.stderr)
        return 2
    except errors.TemporaryError as e:
        print(f"scanqueue: {e} (temporary; try again)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanqueue",
        description=(
            "Scan the container images running in Kubernetes clusters with Trivy, "
            "one temporary single-registry credential Secret per scan, "
            "and keep the results in Postgres."
        ),
        epilog=(
            "Settings come from SCANQUEUE_CONFIG (default ./scanqueue.toml) and "
            "SCANQUEUE_<SECTION>_<KEY> environment variables; see docs/configuration.md."
        ),
    )
    parser.add_argument("--version", action="version", version=f"scanqueue {scanqueue.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (safe to run again)")
    p.add_argument("--database-url", help="libpq URL; default: database.url from the settings")
    p.set_defaults(command=_cmd_migrate)
    _add_results_commands(sub)
    _add_credentials_commands(sub)
    _add_registry_commands(sub)

    _add_watch_commands(sub)
    _add_sim_commands(sub)
    _add_farm_commands(sub)

    return parser


def _cmd_migrate(args: argparse.Namespace) -> int:
    from scanqueue import store

    url = args.database_url or config.load().database.url
    with store.connect(url) as conn:
        applied = store.migrate(conn)
        versions = store.applied_versions(conn)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("database is up to date")
    print(f"schema version {versions[-1] if versions else 0}")
    return 0


# --- credentials (pull secrets, kubelet order) --------------------------------------------


def _add_credentials_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "credentials", help="pull-secret credentials: which ones the kubelet would try"
    )
    group.set_defaults(command=lambda _args: _print_help(group))
    commands = group.add_subparsers(title="credentials commands", metavar="COMMAND")
    p = commands.add_parser(
        "match",
        help="list the credentials matching IMAGE, in the order the kubelet tries them",
        description=(
            "Read each FILE as the JSON of a pull secret (.dockerconfigjson or legacy "
            ".dockercfg, detected) and print, as a JSON list in kubelet order, the "
            "source, normalised registry key and username of every matching credential. "
            "Passwords and tokens are never printed."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image reference, e.g. r.example.com/app:1")
    p.add_argument(
        "--dockerconfig",
        action="append",
        required=True,
        metavar="FILE",
        help="a pull secret's JSON content (repeatable; order = the pod's imagePullSecrets order)",
    )
    p.set_defaults(command=_cmd_credentials_match)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _read_dockerconfigs(paths: list[str]) -> list[list[credentials.Credential]]:
    """One keyring per pull-secret JSON file, in order; ``PermanentError`` naming a bad file."""
    from pathlib import Path

    from scanqueue import credentials

    keyrings = []
    for path in paths:
        try:
            content = Path(path).read_bytes()
        except OSError as e:
            raise errors.PermanentError(
                f"cannot read docker config file {path}: {e.strerror or type(e).__name__}"
            ) from e
        keyrings.append(credentials.parse_dockerconfig(content, source=path))
    return keyrings


def _cmd_credentials_match(args: argparse.Namespace) -> int:
    import json

    from scanqueue import credentials, images

    image = images.parse(args.image)
    keyrings = _read_dockerconfigs(args.dockerconfig)
    found = credentials.candidates(image, keyrings)
    rows = [{"source": c.source, "registry": c.registry, "username": c.username} for c in found]
    print(json.dumps(rows, indent=2))
    return 0


# --- registry (which candidate the registry accepts, and the digest) -----------------------


def _add_registry_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("registry", help="ask an OCI registry: accepted credential, digest")
    group.set_defaults(command=lambda _args: _print_help(group))
    commands = group.add_subparsers(title="registry commands", metavar="COMMAND")
    p = commands.add_parser(
        "resolve",
        help="resolve IMAGE to its digest with the first credential the registry accepts",
        description=(
            "Try the credentials matching IMAGE from each FILE (pull-secret JSON, in kubelet "
            "order) one at a time against the registry, then anonymous with --anonymous. "
            "Print {image, digest, credential} as JSON and exit 0; when no candidate is "
            "accepted print every candidate's answer and exit 3. Never prints a secret."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image reference, e.g. r.example.com/app:1")
    p.add_argument(
        "--dockerconfig",
        action="append",
        default=[],
        metavar="FILE",
        help="a pull secret's JSON content (repeatable; order = the pod's imagePullSecrets order)",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain http (repeatable; adds to scan.insecure_registries)",
    )
    p.add_argument(
        "--anonymous",
        action="store_true",
        help="try an anonymous pull after the credentials (default: credentials only)",
    )
    p.add_argument("--ca-bundle", metavar="FILE", help="CA bundle for registry TLS")
    p.set_defaults(command=_cmd_registry_resolve)


def _cmd_registry_resolve(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from scanqueue import credentials, images, registry

    image = images.parse(args.image)
    keyrings = _read_dockerconfigs(args.dockerconfig)
    candidates = credentials.candidates(image, keyrings)
    scan = config.load().scan
    settings = dataclasses.replace(
        scan,
        allow_anonymous=args.anonymous,
        insecure_registries=(*scan.insecure_registries, *args.insecure_registry),
        registry_ca_bundle=args.ca_bundle or scan.registry_ca_bundle,
    )
    try:
        with registry.Client(settings=settings) as client:
            resolution = client.resolve(image, candidates)
    except (registry.NoCredentialAccepted, registry.RegistryUnavailable) as e:
        refusals = [r.as_dict() for r in e.refusals]
        print(json.dumps({"image": str(image), "digest": None, "credential": None,
                          "refusals": refusals}, indent=2))  # fmt: skip
        print(f"scanqueue: no credential accepted for {image}", file=sys.stderr)
        for refusal in e.refusals:
            print(f"  - {refusal}", file=sys.stderr)
        if not e.refusals:
            print(f"  {e}", file=sys.stderr)
        if isinstance(e, registry.RegistryUnavailable):
            print("  (the registry did not answer for every candidate; try again)", file=sys.stderr)
        return 3
    accepted = resolution.credential
    print(json.dumps({
        "image": str(image),
        "digest": resolution.digest,
        "credential": None if accepted is None else {
            "source": accepted.source, "registry": accepted.registry,
            "username": accepted.username,
        },
    }, indent=2))  # fmt: skip
    return 0


# --- watch and explain (the watcher) ------------------------------------------------------


def _add_watch_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "watch",
        help="watch the clusters' pods; record the inventory and publish one scan per digest",
    )
    p.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NAME",
        help="a configured cluster to watch (repeatable); default: every configured cluster",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-address", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", default="json", choices=["json", "kv"])
    p.add_argument(
        "--reevaluate-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="how often every running digest is checked again (rescans, other clusters' "
        "failures); default 60",
    )
    p.set_defaults(command=_cmd_watch)

    p = sub.add_parser(
        "explain",
        help="per container of a pod: digest, candidate credentials in order, last scan",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("--cluster", required=True, metavar="NAME", help="a configured cluster")
    p.add_argument("--namespace", default="default", metavar="NS", help="default: default")
    p.set_defaults(command=_cmd_explain)


def _cmd_watch(args: argparse.Namespace) -> int:
    import signal
    import threading

    from scanqueue import logs, metrics, watcher

    settings = config.load()
    logs.setup(args.log_level, args.log_format)
    for name in args.cluster:
        settings.cluster(name)  # an unknown name fails before anything starts
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, address=args.metrics_address)
    if args.reevaluate_seconds <= 0:
        raise errors.ConfigError("--reevaluate-seconds must be positive")
    options = watcher.WatchOptions(reevaluate_interval_seconds=args.reevaluate_seconds)
    watcher.run(settings, clusters=args.cluster, stop=stop, options=options)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from scanqueue import dedupe, kube, store, watcher

    settings = config.load()
    cluster = settings.cluster(args.cluster)
    api = kube.api_client(cluster)
    redis_client = dedupe.client(settings.broker.url)
    try:
        with store.connect(settings.database.url) as conn:
            views = watcher.explain(
                settings=settings,
                cluster=cluster.name,
                namespace=args.namespace,
                pod=args.pod,
                api=api,
                redis_client=redis_client,
                conn=conn,
            )
    finally:
        redis_client.close()
    print(f"pod {args.namespace}/{args.pod} in cluster {cluster.name}")
    for view in views:
        r = view.request
        print(f"\n{r.container_type} container {r.container}: {r.image}")
        print(f"  workload   {r.workload_kind}/{r.workload_name}, node {r.node or '-'}")
        print(f"  digest     {r.digest or '(not running yet: no imageID)'}")
        if view.candidates:
            print("  credentials, in the order they are tried:")
            for i, c in enumerate(view.candidates, 1):
                print(f"    {i}. secret {c.source}, registry key {c.key}")
        else:
            print("  credentials: none match (anonymous pull, then node mode)")
        for note in view.notes:
            print(f"  note       {note}")
        scan = view.last_scan
        if scan is None:
            print("  last scan  none")
        else:
            when = scan.finished_at or scan.started_at
            how = f"{scan.mode}" + (
                f" with {scan.credential_source}" if scan.credential_source else ""
            )
            print(
                f"  last scan  {scan.status} in {scan.cluster} at {when:%Y-%m-%d %H:%M:%S %Z} "
                f"({how}; {scan.findings} findings)"
            )
            if scan.error:
                print(f"             {scan.error}")
        state = "fresh" if view.fresh else "due"
        if view.in_flight is not None:
            state = f"in flight in {view.in_flight.cluster} (scan {view.in_flight.scan_id})"
        if view.failed_in:
            state += f"; failed in {', '.join(view.failed_in)} this interval"
        print(f"  farm       {state}")
    return 0


# ----------------------------------------------------------- results and reports


_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")  # reports.SEVERITIES, not imported


def _add_results_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="current findings by workload, image or vulnerability",
        description=(
            "Current findings: for each running container, the latest successful scan of "
            "the digest it runs. Each finding counts once per workload, image or advisory."
        ),
    )
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument(
        "--min-severity",
        type=str.upper,
        choices=_SEVERITIES,
        default="UNKNOWN",
        metavar="SEVERITY",
        help="only findings at this severity or above: " + ", ".join(_SEVERITIES),
    )
    p.add_argument("--fixable", action="store_true", help="only findings with a fixed version")
    p.add_argument("--by", choices=("workload", "image", "vulnerability"), default="workload")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--database-url", help="libpq URL; default: database.url from the settings")
    p.set_defaults(command=_cmd_report)

    p = sub.add_parser("reports", help="read or import Trivy JSON reports")
    reports_sub = p.add_subparsers(title="reports commands", metavar="COMMAND", required=True)
    p = reports_sub.add_parser(
        "parse", help="check a Trivy JSON report and print its artifact and finding counts"
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(command=_cmd_reports_parse)
    p = reports_sub.add_parser(
        "import", help="store a report produced elsewhere (e.g. a CI pipeline) as a scan"
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--cluster", required=True, help="the cluster to file the scan under")
    p.add_argument("--image", required=True, metavar="REF@DIGEST", help="the image, by digest")
    p.add_argument("--database-url", help="libpq URL; default: database.url from the settings")
    p.set_defaults(command=_cmd_reports_import)


def _cmd_reports_parse(args: argparse.Namespace) -> int:
    import json

    from scanqueue import reports

    report = reports.parse_file(args.file)  # InvalidReport: one line on stderr, exit 2
    print(json.dumps(report.summary()))
    return 0


def _cmd_reports_import(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from scanqueue import reports, store

    report = reports.parse_file(args.file)
    url = args.database_url or config.load().database.url
    with store.connect(url) as conn:
        scan_id = store.import_report(
            conn, cluster=args.cluster, image=args.image, report=report, at=datetime.now(UTC)
        )
    counts = ", ".join(f"{n} {s}" for s, n in report.by_severity().items()) or "none"
    print(f"imported {args.file} as scan {scan_id}: {len(report.findings)} findings ({counts})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from scanqueue import store

    url = args.database_url or config.load().database.url
    with store.connect(url) as conn:
        table = store.report(
            conn,
            by=args.by,
            cluster=args.cluster,
            namespace=args.namespace,
            min_severity=args.min_severity,
            fixable=args.fixable,
        )
    if args.format == "json":
        print(_render_json(table.columns, table.rows))
    elif args.format == "csv":
        sys.stdout.write(_render_csv(table.columns, table.rows))
    elif table.rows:
        print(_render_table(table.columns, table.rows, width=_terminal_width()))
    else:
        print("no current findings match these filters", file=sys.stderr)
    return 0


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _json_value(value: object) -> object:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return value


def _render_json(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    import json

    return json.dumps(
        [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows],
        indent=2,
    )


def _render_csv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def _short_digest(text: str) -> str:
    """``sha256:`` and 12 hex digits, as ``docker images`` shows IDs; full in CSV and JSON."""
    return text[:19] if text.startswith("sha256:") and len(text) > 19 else text


# count columns are narrow; their headers should be too
_SHORT_HEADERS = {
    "critical": "crit",
    "medium": "med",
    "unknown": "unkn",
    "fixable": "fix",
    "workloads": "wkld",
    "vulnerability_id": "vulnerability",
}


def _render_table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, width: int) -> str:
    """A plain-text table no wider than ``width``: the widest columns are cut with '…'."""
    from decimal import Decimal

    headers = [_SHORT_HEADERS.get(c, c) for c in columns]
    cells = [[_short_digest(_cell(v)) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(headers)]
    gap = 2
    while sum(widths) + gap * (len(widths) - 1) > width:
        # numbers are never cut; the widest text column gives way first
        widest = max(range(len(widths)), key=lambda i: -1 if numeric[i] else widths[i])
        if widths[widest] <= 8:  # nothing sensible left to cut; let the terminal wrap
            break
        widths[widest] -= 1

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:  # image names differ at their end, the rest at the start
            cut = widths[i] - 1
            text = "…" + text[-cut:] if columns[i] == "image" else text[:cut] + "…"
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    lines = [[fit(c.upper(), i) for i, c in enumerate(headers)]]
    lines += [[fit(v, i) for i, v in enumerate(row)] for row in cells]
    return "\n".join((" " * gap).join(line).rstrip() for line in lines)


# --- sim (the Kubernetes API emulator: tests and demo only) --------------------------------


def _add_sim_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("sim", help="the Kubernetes API emulator used by the tests and the demo")
    group.set_defaults(command=lambda _args: _print_help(group))
    commands = group.add_subparsers(title="sim commands", metavar="COMMAND")
    p = commands.add_parser(
        "serve",
        help="run the emulator until interrupted",
        description=(
            "Run the Kubernetes API emulator (API server, Job controller, kubelet for scan "
            "pods) on HOST:PORT, optionally loaded with a scenario, and print one line of "
            'JSON: {"url": ..., "kubeconfig": ..., "pods": N, "unresolved": [...]}.'
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one")
    p.add_argument(
        "--scenario", metavar="FILE", help="scenario YAML to load; 'demo' for the bundled demo"
    )
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fill ${NAME} in the scenario (repeatable)",
    )
    p.add_argument("--kube-version", default="1.30", help="schemas to validate with (1.25-1.37)")
    p.add_argument("--kubeconfig-out", metavar="FILE", help="write a kubeconfig for the emulator")
    p.add_argument(
        "--no-pull", action="store_true", help="scan pods succeed without pulling (benchmarks)"
    )
    p.set_defaults(command=_cmd_sim_serve)


def _cmd_sim_serve(args: argparse.Namespace) -> int:
    import json
    import signal
    import threading

    from scanqueue.sim import emulator, scenario

    variables: dict[str, str] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise errors.PermanentError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    loaded = None
    if args.scenario:
        path = None if args.scenario == "demo" else args.scenario
        loaded = scenario.load(path, variables=variables)
    emu = emulator.Emulator(
        host=args.host, port=args.port, kube_version=args.kube_version, real_pull=not args.no_pull
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emu.start()
    try:
        applied = scenario.apply(emu, loaded) if loaded is not None else None
        kubeconfig = str(emu.kubeconfig(args.kubeconfig_out)) if args.kubeconfig_out else None
        line = {
            "url": emu.url,
            "kubeconfig": kubeconfig,
            "scenario": loaded.source if loaded is not None else None,
            "pods": len(applied.pods) if applied is not None else 0,
            "unresolved": applied.unresolved if applied is not None else [],
        }
        print(json.dumps(line), flush=True)
        stop.wait()
    finally:
        emu.stop()
    return 0


# --- run and demo (the whole farm as local processes) -------------------------------------


def _add_farm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flower-address", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--flower-port", type=int, default=5555, help="default 5555; 0: a free port")
    p.add_argument(
        "--flower-unauthenticated",
        action="store_true",
        help="run Flower without FLOWER_BASIC_AUTH (loopback only; for local use)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--state-dir", metavar="DIR", help="keep settings, logs and demo data here")
    p.add_argument(
        "--private-services",
        action="store_true",
        help="embedded default: start its own Redis and PostgreSQL even if others answer",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def _add_farm_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole farm locally: migrations, watcher, worker + beat, Flower",
        description=(
            "Apply migrations, then run the watcher, a Celery worker with beat embedded and "
            "Flower against the clusters of scanqueue.toml, until Ctrl-C. With no "
            "scanqueue.toml and no kubeconfig, run the embedded default: the bundled demo "
            "cluster on the Kubernetes API emulator and a local private registry. Flower "
            "needs FLOWER_BASIC_AUTH=user:password (the embedded default generates one)."
        ),
    )
    _add_farm_options(p)
    p.add_argument("--demo", action="store_true", help="the embedded default, whatever exists")
    p.set_defaults(command=_cmd_run, until_scanned=False)
    p = sub.add_parser(
        "demo",
        help="the embedded default until the demo cluster is scanned; print the report",
        description=(
            "Start the embedded default of `scanqueue run`, wait until every image of the "
            "demo cluster has a finished scan, print `scanqueue report`, stop everything. "
            "Exit 0 when every image was scanned, 1 otherwise (with the reasons)."
        ),
    )
    _add_farm_options(p)
    p.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds"
    )
    p.set_defaults(command=_cmd_run, until_scanned=True, demo=True)


def _cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading
    from pathlib import Path

    from scanqueue import farm

    options = farm.Options(
        demo=args.demo,
        until_scanned=args.until_scanned,
        timeout_seconds=getattr(args, "timeout", 600.0),
        concurrency=args.concurrency,
        flower_address=args.flower_address,
        flower_port=args.flower_port,
        flower_unauthenticated=args.flower_unauthenticated,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        private_services=args.private_services,
        log_level=args.log_level,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    report_codes: list[int] = []

    def report(outcome: farm.Outcome) -> None:
        """The demo's report, printed while its database (maybe its own) still runs."""
        if not args.until_scanned or outcome.cluster is None:
            return
        if outcome.unfinished:
            print("scanqueue: not every image of the demo cluster was scanned:", file=sys.stderr)
            for line in outcome.unfinished:
                print(f"  - {line}", file=sys.stderr)
        sys.stdout.flush()
        report_codes.append(
            main(["report", "--cluster", outcome.cluster, "--database-url", outcome.database_url])
        )

    outcome = farm.run(options, stop=stop, before_stop=report)
    return outcome.exit_code or max(report_codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
