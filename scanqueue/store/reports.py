"""The queries behind ``scanqueue report``: current findings grouped by workload, image or advisory.

They read the ``current_findings`` view (migration 0003), so that what the
command prints and what anyone sees with psql are the same rows.

It must never write (every function here only reads) and never build SQL from
its arguments: filters are bound parameters, the grouping picks one of a
fixed set of queries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from scanqueue import errors, reports
from scanqueue.store import db

ReportBy = Literal["workload", "image", "vulnerability"]


@dataclasses.dataclass(frozen=True)
class ReportTable:
    """Rows of a report query: column names, then one tuple per row in that order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


# Each query filters the current_findings view the same way (cluster, namespace,
# minimum severity, fixable only): the CTE cf. Then it counts each distinct finding once.
_FILTERED = """
    WITH cf AS (
        SELECT * FROM current_findings
         WHERE (%(cluster)s::text IS NULL OR cluster = %(cluster)s)
           AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
           AND severity_rank >= %(min_rank)s
           AND (fixable OR NOT %(fixable)s)
    )"""
_SEVERITY_COUNTS = """count(*) FILTER (WHERE severity = 'CRITICAL') AS critical,
           count(*) FILTER (WHERE severity = 'HIGH') AS high,
           count(*) FILTER (WHERE severity = 'MEDIUM') AS medium,
           count(*) FILTER (WHERE severity = 'LOW') AS low,
           count(*) FILTER (WHERE severity = 'UNKNOWN') AS unknown,
           count(*) FILTER (WHERE fixable) AS fixable,
           count(*) AS total"""
_REPORT_QUERIES: dict[str, str] = {
    "workload": f"""{_FILTERED},
    f AS (SELECT DISTINCT cluster, namespace, workload_kind, workload, digest, vulnerability_id,
                 package, installed_version, target, severity, fixable
            FROM cf)
    SELECT cluster, namespace, workload_kind || '/' || workload AS workload,
           {_SEVERITY_COUNTS}
      FROM f
     GROUP BY cluster, namespace, workload_kind, workload
     ORDER BY critical DESC, high DESC, medium DESC, low DESC, unknown DESC,
              cluster, namespace, workload_kind, workload""",  # noqa: S608 (constants only)
    "image": f"""{_FILTERED},
    f AS (SELECT DISTINCT registry, repository, digest, vulnerability_id, package,
                 installed_version, target, severity, fixable
            FROM cf),
    w AS (SELECT digest, string_agg(DISTINCT cluster, ',' ORDER BY cluster) AS clusters,
                 count(DISTINCT (cluster, namespace, workload_kind, workload)) AS workloads
            FROM cf GROUP BY digest)
    SELECT f.registry || '/' || f.repository AS image, f.digest, w.clusters, w.workloads,
           {_SEVERITY_COUNTS}
      FROM f JOIN w ON w.digest = f.digest
     GROUP BY f.registry, f.repository, f.digest, w.clusters, w.workloads
     ORDER BY critical DESC, high DESC, medium DESC, low DESC, unknown DESC, image, f.digest""",  # noqa: S608
    "vulnerability": f"""{_FILTERED}
    SELECT vulnerability_id,
           (array_agg(severity ORDER BY severity_rank DESC))[1] AS severity,
           max(cvss_score) AS cvss,
           bool_or(fixable) AS fixable,
           count(DISTINCT digest) AS images,
           count(DISTINCT (cluster, namespace, workload_kind, workload)) AS workloads,
           string_agg(DISTINCT package, ',' ORDER BY package) AS packages,
           max(title) AS title
      FROM cf
     GROUP BY vulnerability_id
     ORDER BY max(severity_rank) DESC, workloads DESC, cvss DESC NULLS LAST,
              vulnerability_id""",  # noqa: S608
}


@db.translated
def report(
    conn: db.Connection,
    *,
    by: ReportBy = "workload",
    cluster: str | None = None,
    namespace: str | None = None,
    min_severity: str = "UNKNOWN",
    fixable: bool = False,
) -> ReportTable:
    """Current findings (the ``current_findings`` view) grouped by workload, image or advisory.

    Filters: one cluster, one namespace, findings at ``min_severity`` or above,
    only findings with a fixed version. Raises ``PermanentError`` for an
    unknown grouping or severity.
    """
    if by not in _REPORT_QUERIES:
        raise errors.PermanentError(
            f"report by {by!r} is not known; expected one of {', '.join(_REPORT_QUERIES)}"
        )
    try:
        min_rank = reports.severity_rank(min_severity)
    except ValueError as e:
        raise errors.PermanentError(f"minimum severity: {e}") from None
    with conn.cursor() as cur:
        cur.execute(
            _REPORT_QUERIES[by].encode(),
            {"cluster": cluster, "namespace": namespace, "min_rank": min_rank, "fixable": fixable},
        )
        columns = tuple(d.name for d in cur.description or ())
        rows = tuple(tuple(r) for r in cur.fetchall())
    return ReportTable(columns, rows)
