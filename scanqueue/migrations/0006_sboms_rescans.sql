-- Rescans from the stored package list (docs/rescans.md, issue 16).
--
-- sboms: the package inventory of a digest, kept once, from its first successful full scan
-- with a usable package list: Trivy's JSON turned into CycloneDX (`trivy convert`), gzip'd.
-- A rescan (`trivy sbom` in a worker) evaluates it against the current vulnerability DB
-- with no cluster, registry or credential involved. scanner_version is the Trivy that listed
-- the packages: one older than rescan.min_trivy_version is not trusted (full scan instead).
CREATE TABLE sboms (
    digest text PRIMARY KEY REFERENCES images (digest) ON DELETE CASCADE,
    format text NOT NULL CHECK (format IN ('cyclonedx')),
    compression text NOT NULL CHECK (compression IN ('gzip')),
    document bytea NOT NULL,           -- the compressed CycloneDX JSON
    size_bytes integer NOT NULL,       -- uncompressed
    packages integer NOT NULL,         -- components listed
    scanner_version text,              -- Trivy.Version of the report it came from
    scan_id text NOT NULL,             -- the full scan it came from (no reference: outlives pruning)
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every scan records the vulnerability DB it was evaluated against (the DB's UpdatedAt):
-- a digest whose last evaluation used an older DB than the farm's is due for a rescan.
ALTER TABLE scans ADD COLUMN db_updated_at timestamptz;

-- mode 'sbom': a rescan from the stored SBOM (no Job, no credential, no pull).
ALTER TABLE scans DROP CONSTRAINT scans_mode_check;
ALTER TABLE scans ADD CONSTRAINT scans_mode_check
    CHECK (mode IN ('registry', 'node', 'anonymous', 'import', 'sbom'));

-- The vulnerability DB the farm's rescans use, as last observed (one row).
CREATE TABLE vulnerability_db (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    updated_at timestamptz NOT NULL,   -- the DB's UpdatedAt
    trivy_version text,
    source text NOT NULL,              -- the Trivy server URL or the cache directory
    observed_at timestamptz NOT NULL
);

-- Digests whose next evaluation must be a full scan (no usable SBOM, an unreadable one, one
-- from a Trivy too old): the watcher does not count them fresh until a full scan succeeds.
CREATE TABLE full_scans_wanted (
    digest text PRIMARY KEY REFERENCES images (digest) ON DELETE CASCADE,
    reason text NOT NULL,
    wanted_at timestamptz NOT NULL DEFAULT now()
);
