-- Views for the usual questions; `scanqueue report` reads them and so can anyone with psql.

-- The latest successful scan of each digest (in whichever cluster it ran:
-- one scan per digest serves the whole farm).
CREATE VIEW latest_scans AS
SELECT DISTINCT ON (s.digest)
       s.digest, s.id AS scan_id, s.finished_at AS scanned_at, s.scanner_version, s.mode
  FROM scans s
 WHERE s.status = 'succeeded'
 ORDER BY s.digest, s.finished_at DESC, s.id DESC;

-- What runs now: one row per (workload, container name, digest), however many pods.
CREATE VIEW workload_images AS
SELECT cl.name AS cluster, w.namespace, w.kind AS workload_kind, w.name AS workload,
       c.container, c.container_type, c.image, c.digest,
       count(*) AS pods, min(c.first_seen) AS first_seen, max(c.last_seen) AS last_seen
  FROM containers c
  JOIN workloads w ON w.id = c.workload_id
  JOIN clusters cl ON cl.id = c.cluster_id
 WHERE c.gone_at IS NULL
 GROUP BY cl.name, w.namespace, w.kind, w.name, c.container, c.container_type, c.image, c.digest;

-- Current findings per workload: the latest successful scan of the digest each
-- running container runs.
CREATE VIEW current_findings AS
SELECT wi.cluster, wi.namespace, wi.workload_kind, wi.workload, wi.container, wi.image,
       wi.digest, i.registry, i.repository, ls.scan_id, ls.scanned_at,
       f.vulnerability_id, f.severity, severity_rank(f.severity) AS severity_rank,
       f.package, f.installed_version, f.fixed_version, f.fixed_version <> '' AS fixable,
       f.status, f.target, f.class, v.title, v.url, v.cvss_score
  FROM workload_images wi
  JOIN latest_scans ls ON ls.digest = wi.digest
  JOIN images i ON i.digest = wi.digest
  JOIN findings f ON f.scan_id = ls.scan_id
  JOIN vulnerabilities v ON v.id = f.vulnerability_id;

-- Severity counts per cluster / namespace / workload (each distinct finding of
-- the workload's images once, even when two containers run the same image).
CREATE VIEW severity_summary AS
WITH distinct_findings AS (
    SELECT DISTINCT cluster, namespace, workload_kind, workload, digest, vulnerability_id,
           package, installed_version, target, severity, fixable
      FROM current_findings
)
SELECT cluster, namespace, workload_kind, workload,
       count(*) FILTER (WHERE severity = 'CRITICAL') AS critical,
       count(*) FILTER (WHERE severity = 'HIGH') AS high,
       count(*) FILTER (WHERE severity = 'MEDIUM') AS medium,
       count(*) FILTER (WHERE severity = 'LOW') AS low,
       count(*) FILTER (WHERE severity = 'UNKNOWN') AS unknown,
       count(*) FILTER (WHERE fixable) AS fixable,
       count(*) AS total
  FROM distinct_findings
 GROUP BY cluster, namespace, workload_kind, workload;

-- Critical and high findings that have a fixed version: what to upgrade first.
CREATE VIEW fixable_findings AS
SELECT * FROM current_findings
 WHERE fixable AND severity IN ('CRITICAL', 'HIGH');

-- Running images with no successful scan, or whose latest scan failed, and why.
CREATE VIEW unscanned_images AS
WITH last_attempt AS (
    SELECT DISTINCT ON (s.digest)
           s.digest, s.id AS scan_id, s.status, s.mode, s.attempt, s.credential_source,
           s.error, coalesce(s.finished_at, s.started_at) AS at
      FROM scans s
     ORDER BY s.digest, coalesce(s.finished_at, s.started_at) DESC, s.id DESC
)
SELECT wi.cluster, wi.namespace, wi.workload_kind, wi.workload, wi.container, wi.image,
       wi.digest, la.scan_id, la.status, la.mode, la.attempt, la.credential_source, la.at,
       CASE
           WHEN wi.digest IS NULL THEN 'digest not known yet (container not started)'
           WHEN la.digest IS NULL THEN 'never scanned'
           WHEN la.status IN ('pending', 'running') THEN 'scan in progress, none succeeded yet'
           ELSE la.status || ': ' || coalesce(la.error, 'no reason recorded')
       END AS reason,
       ls.scanned_at AS last_success
  FROM workload_images wi
  LEFT JOIN last_attempt la ON la.digest = wi.digest
  LEFT JOIN latest_scans ls ON ls.digest = wi.digest
 WHERE wi.digest IS NULL
    OR la.digest IS NULL
    OR la.status NOT IN ('succeeded')
       AND NOT (la.status IN ('pending', 'running') AND ls.digest IS NOT NULL);

-- New and resolved findings between the last two successful scans of each repository
-- (whatever digests they scanned). A finding is the same when advisory, package
-- and result class match; the target is left out because it names the tag and
-- the OS release, which change between builds.
CREATE VIEW finding_changes AS
WITH ranked AS (
    SELECT s.id, s.digest, s.finished_at, i.registry, i.repository,
           row_number() OVER (PARTITION BY i.registry, i.repository
                              ORDER BY s.finished_at DESC, s.id DESC) AS n
      FROM scans s JOIN images i ON i.digest = s.digest
     WHERE s.status = 'succeeded'
),
pairs AS (
    SELECT cur.registry, cur.repository, cur.id AS scan_id, cur.digest,
           cur.finished_at AS scanned_at, prev.id AS previous_scan_id,
           prev.digest AS previous_digest, prev.finished_at AS previous_scanned_at
      FROM ranked cur JOIN ranked prev
        ON prev.registry = cur.registry AND prev.repository = cur.repository AND prev.n = 2
     WHERE cur.n = 1
),
cur_f AS (
    SELECT DISTINCT p.registry, p.repository, f.vulnerability_id, f.package,
           coalesce(f.class, '') AS class, f.installed_version, f.fixed_version, f.severity
      FROM pairs p JOIN findings f ON f.scan_id = p.scan_id
),
prev_f AS (
    SELECT DISTINCT p.registry, p.repository, f.vulnerability_id, f.package,
           coalesce(f.class, '') AS class, f.installed_version, f.fixed_version, f.severity
      FROM pairs p JOIN findings f ON f.scan_id = p.previous_scan_id
),
changes AS (
    SELECT 'new' AS change, c.* FROM cur_f c
     WHERE NOT EXISTS (SELECT 1 FROM prev_f p
                        WHERE (p.registry, p.repository, p.vulnerability_id, p.package, p.class)
                            = (c.registry, c.repository, c.vulnerability_id, c.package, c.class))
    UNION ALL
    SELECT 'resolved' AS change, p.* FROM prev_f p
     WHERE NOT EXISTS (SELECT 1 FROM cur_f c
                        WHERE (p.registry, p.repository, p.vulnerability_id, p.package, p.class)
                            = (c.registry, c.repository, c.vulnerability_id, c.package, c.class))
)
SELECT ch.change, ch.registry, ch.repository, ch.vulnerability_id, ch.severity, ch.package,
       ch.installed_version, ch.fixed_version, ch.class,
       pa.scan_id, pa.digest, pa.scanned_at,
       pa.previous_scan_id, pa.previous_digest, pa.previous_scanned_at
  FROM changes ch
  JOIN pairs pa ON pa.registry = ch.registry AND pa.repository = ch.repository;
