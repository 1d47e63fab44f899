"""Postgres: the farm's inventory, scans, results and reports. The only package importing psycopg.

Callers write ``from scanqueue import store`` and call ``store.start_scan(...)``;
every public name of the modules below is re-exported here so that they never
need to know which module holds it:

- ``db``: connections, the pool, migrations, psycopg errors translated once;
- ``inventory``: clusters, workloads, containers (what runs where);
- ``scans``: scan rows and their state;
- ``results``: a report's vulnerabilities and findings (the ingest: one statement);
- ``reports``: the queries behind the views and ``scanqueue report``;
- ``overview``: the farm at a glance (vulnerability metrics, the HTML report);
- ``maintenance``: day-two selections and pruning of containers long gone.

Write functions take a connection (from ``connect`` or a ``pool``) and run as
one transaction each: they commit on return, or become a savepoint of the
caller's transaction when one is open. Writes are idempotent: a re-delivered
task calling the same function with the same arguments changes nothing.
Datetimes passed in must be timezone-aware. No row ever holds a credential
value: only where a credential came from. Nothing here connects at import time.
"""

from __future__ import annotations

from scanqueue.store.db import (
    MIGRATIONS_DIR,
    Connection,
    Migration,
    Pool,
    applied_versions,
    connect,
    migrate,
    migrations,
    pool,
)
from scanqueue.store.inventory import (
    ContainerRow,
    ContainerType,
    forget_pods,
    record_containers,
    replace_cluster_inventory,
)
from scanqueue.store.maintenance import Pruned, prune, prune_gone, select_digests
from scanqueue.store.reports import ReportBy, ReportTable, report
from scanqueue.store.results import finish_scan, import_report
from scanqueue.store.scans import (
    FAILED_STATUSES,
    ScanMode,
    ScanNotRecorded,
    ScanRow,
    ScanStatus,
    fail_scan,
    fresh_digests,
    get_scan,
    last_scan,
    prune_scans,
    running_scans,
    scan_seconds,
    start_scan,
)

__all__ = [
    "FAILED_STATUSES",
    "MIGRATIONS_DIR",
    "Connection",
    "ContainerRow",
    "ContainerType",
    "Migration",
    "Pool",
    "Pruned",
    "ReportBy",
    "ReportTable",
    "ScanMode",
    "ScanNotRecorded",
    "ScanRow",
    "ScanStatus",
    "applied_versions",
    "connect",
    "fail_scan",
    "finish_scan",
    "forget_pods",
    "fresh_digests",
    "get_scan",
    "import_report",
    "last_scan",
    "migrate",
    "migrations",
    "pool",
    "prune",
    "prune_gone",
    "prune_scans",
    "record_containers",
    "replace_cluster_inventory",
    "report",
    "running_scans",
    "scan_seconds",
    "select_digests",
    "start_scan",
]
