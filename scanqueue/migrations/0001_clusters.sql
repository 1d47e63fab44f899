-- The farm's clusters. The results schema (workloads, images, scans, findings)
-- builds on this table in later migrations.
CREATE TABLE IF NOT EXISTS clusters (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
