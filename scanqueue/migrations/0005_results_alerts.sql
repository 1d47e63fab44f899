-- Alerts on new findings (scanqueue.alerts, workers/alerts.py).
--
-- A succeeded scan writes one alert_outbox row in its own transaction (store.finish_scan),
-- so an alert is never lost and never holds up the scan: the alerts task plans it later.
-- Planning records each qualifying (workload, finding) in alerted_findings, once: the same
-- finding on the same workload alerts once, however many rescans find it. Each workload with
-- new findings gets one alert_deliveries row per configured webhook, with its attempts; a
-- delivery that ran out of attempts (or was refused for good) is a dead letter, kept with
-- its last error (alert_dead_letters). The webhook column names a configured URL
-- ("slack#0"), never the URL, which may itself be a secret.

CREATE TABLE alert_outbox (
    scan_id text PRIMARY KEY REFERENCES scans (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    planned_at timestamptz             -- NULL until its deliveries were planned
);
CREATE INDEX alert_outbox_pending ON alert_outbox (created_at) WHERE planned_at IS NULL;

CREATE TABLE alerted_findings (
    cluster text NOT NULL,
    namespace text NOT NULL,
    workload_kind text NOT NULL,
    workload text NOT NULL,
    vulnerability_id text NOT NULL,
    package text NOT NULL,
    scan_id text NOT NULL,             -- the scan that first found it (no reference: outlives pruning)
    alerted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster, namespace, workload_kind, workload, vulnerability_id, package)
);

CREATE TABLE alert_deliveries (
    id bigserial PRIMARY KEY,
    scan_id text NOT NULL,
    cluster text NOT NULL,
    namespace text NOT NULL,
    workload_kind text NOT NULL,
    workload text NOT NULL,
    webhook text NOT NULL,             -- "generic#0", "alertmanager#1", "slack#0": never the URL
    notification jsonb NOT NULL,       -- what is sent, before the webhook's shape is applied
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (scan_id, cluster, namespace, workload_kind, workload, webhook)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE VIEW alert_dead_letters AS
SELECT id, scan_id, cluster, namespace, workload_kind, workload, webhook, attempts, last_error,
       created_at, finished_at, notification
  FROM alert_deliveries
 WHERE state = 'dead';
