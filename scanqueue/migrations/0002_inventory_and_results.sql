-- Inventory (what runs where) and results (what each scan found).
-- No row ever holds a credential value: scans.credential_source names where a
-- credential came from ("team-a/regcred"), nothing more.

-- Severity order for filters and sorting: UNKNOWN 0 .. CRITICAL 4.
CREATE FUNCTION severity_rank(severity text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE upper(severity)
        WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2 WHEN 'LOW' THEN 1
        ELSE 0 END;

-- A workload is what owns pods: Deployment, StatefulSet, DaemonSet, CronJob, Job,
-- or the Pod itself when nothing owns it.
CREATE TABLE workloads (
    id bigserial PRIMARY KEY,
    cluster_id bigint NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    namespace text NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    UNIQUE (cluster_id, namespace, kind, name)
);

-- Images by digest: one row however many tags, pods and clusters run it.
CREATE TABLE images (
    digest text PRIMARY KEY CHECK (digest ~ '^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$'),
    registry text NOT NULL,            -- "docker.io", "registry.example.com:5000"
    repository text NOT NULL,          -- "library/nginx"
    os_family text,                    -- from the last successful scan
    os_name text,
    first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_repository ON images (registry, repository);

-- One row per container of a running pod (a Deployment of 5 replicas has 5).
-- gone_at is set when the pod disappears; a row comes back to life when seen again.
CREATE TABLE containers (
    id bigserial PRIMARY KEY,
    cluster_id bigint NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    namespace text NOT NULL,
    pod text NOT NULL,
    container text NOT NULL,
    container_type text NOT NULL CHECK (container_type IN ('init', 'app', 'ephemeral')),
    workload_id bigint NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    image text NOT NULL,               -- the image as written in the pod spec
    digest text,                       -- from status.containerStatuses[].imageID; NULL until known
    node text,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    gone_at timestamptz,
    UNIQUE (cluster_id, namespace, pod, container)
);
CREATE INDEX containers_live_digest ON containers (digest) WHERE gone_at IS NULL;
CREATE INDEX containers_live_workload ON containers (workload_id) WHERE gone_at IS NULL;

-- One row per scan attempt chain; id is the worker's scan id. digest is NULL
-- only for a scan that failed before the image's digest was known.
CREATE TABLE scans (
    id text PRIMARY KEY,
    digest text REFERENCES images (digest) ON DELETE CASCADE,
    cluster_id bigint NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    image text NOT NULL,               -- the reference scanned, pinned by digest
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'timeout', 'refused')),
    mode text NOT NULL CHECK (mode IN ('registry', 'node', 'anonymous', 'import')),
    attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    credential_source text,            -- "namespace/secret-name" or a file path; never a value
    scanner_version text,
    artifact text,                     -- the report's ArtifactName
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    error text,
    CHECK ((status IN ('pending', 'running')) = (finished_at IS NULL))
);
CREATE INDEX scans_digest_finished ON scans (digest, finished_at DESC);
CREATE INDEX scans_succeeded ON scans (digest, finished_at DESC) WHERE status = 'succeeded';
CREATE INDEX scans_in_flight ON scans (cluster_id, started_at) WHERE status IN ('pending', 'running');

-- One row per advisory ID, updated when a newer report says more.
CREATE TABLE vulnerabilities (
    id text PRIMARY KEY,
    title text NOT NULL DEFAULT '',
    severity text NOT NULL CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'UNKNOWN')),
    url text NOT NULL DEFAULT '',
    cvss_score numeric(3, 1),
    cvss jsonb NOT NULL DEFAULT '{}',
    published_at timestamptz,
    modified_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vulnerabilities_severity ON vulnerabilities (severity_rank(severity));

-- One row per entry of a report's Vulnerabilities lists. ordinal is the entry's
-- position in the report, so a re-delivered report maps onto the same keys.
CREATE TABLE findings (
    scan_id text NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    ordinal integer NOT NULL,
    vulnerability_id text NOT NULL REFERENCES vulnerabilities (id),
    package text NOT NULL,
    installed_version text NOT NULL DEFAULT '',
    fixed_version text NOT NULL DEFAULT '',
    status text,                       -- fixed, affected, will_not_fix...; NULL in older reports
    severity text NOT NULL CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'UNKNOWN')),
    target text NOT NULL,
    class text,
    type text,
    package_path text NOT NULL DEFAULT '',
    PRIMARY KEY (scan_id, ordinal)
);
CREATE INDEX findings_vulnerability ON findings (vulnerability_id);
CREATE INDEX findings_severe_fixable ON findings (scan_id)
    WHERE fixed_version <> '' AND severity IN ('CRITICAL', 'HIGH');
