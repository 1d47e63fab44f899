"""``scanqueue migrate``, ``report`` and ``reports parse|import``: the database side of the command.

Rendering lives in ``render``; this module only turns arguments into store calls.
"""

from __future__ import annotations

import argparse
import sys

from scanqueue import config
from scanqueue.cli import parsing, render


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser("migrate", help="apply database migrations (safe to run again)")
    p.add_argument("--database-url", help="libpq URL; default: database.url from the settings")
    p.set_defaults(command=_cmd_migrate)
    _add_results_commands(sub)


def _database(args: argparse.Namespace) -> tuple[str, str | None]:
    """The database URL (``--database-url`` or the settings') and the settings' password."""
    settings = config.load()
    return args.database_url or settings.database.url, config.database_password(settings.database)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from scanqueue import store

    url, password = _database(args)
    with store.connect(url, password=password) as conn:
        applied = store.migrate(conn)
        versions = store.applied_versions(conn)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("database is up to date")
    print(f"schema version {versions[-1] if versions else 0}")
    return 0


_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")  # reports.SEVERITIES, not imported


def _add_results_commands(sub: parsing.Subparsers) -> None:
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
    p.add_argument(
        "--format",
        choices=("table", "csv", "json", "html"),
        default="table",
        help="html: one self-contained page for the whole farm (filters and --by do not apply)",
    )
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
    url, password = _database(args)
    with store.connect(url, password=password) as conn:
        scan_id = store.import_report(
            conn, cluster=args.cluster, image=args.image, report=report, at=datetime.now(UTC)
        )
    counts = ", ".join(f"{n} {s}" for s, n in report.by_severity().items()) or "none"
    print(f"imported {args.file} as scan {scan_id}: {len(report.findings)} findings ({counts})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from scanqueue import store

    url, password = _database(args)
    if args.format == "html":
        return _report_html(args, url, password)
    with store.connect(url, password=password) as conn:
        table = store.report(
            conn,
            by=args.by,
            cluster=args.cluster,
            namespace=args.namespace,
            min_severity=args.min_severity,
            fixable=args.fixable,
        )
    if args.format == "json":
        print(render.as_json(table.columns, table.rows))
    elif args.format == "csv":
        sys.stdout.write(render.as_csv(table.columns, table.rows))
    elif table.rows:
        print(render.as_table(table.columns, table.rows, width=render.terminal_width()))
    else:
        print("no current findings match these filters", file=sys.stderr)
    return 0


def _report_html(args: argparse.Namespace, url: str, password: str | None) -> int:
    from datetime import UTC, datetime

    from scanqueue import errors, store
    from scanqueue.cli import html
    from scanqueue.store import overview

    if args.cluster or args.namespace or args.fixable or args.min_severity != "UNKNOWN":
        raise errors.PermanentError(
            "--format html shows the whole farm; drop --cluster, --namespace, --min-severity "
            "and --fixable, or use --format table, csv or json for a filtered report"
        )
    with store.connect(url, password=password) as conn:
        data = overview.overview(conn, now=datetime.now(UTC))
    sys.stdout.write(html.render(data))
    return 0
