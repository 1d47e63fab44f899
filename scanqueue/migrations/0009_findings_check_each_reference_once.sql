-- The check after an INSERT into findings (0004's findings_check_references): each
-- distinct scan and advisory looked up once, by a plan that cannot go stale.
--
-- 0004 joined the new findings (the transition table) to scans and to vulnerabilities.
-- PL/pgSQL plans that query once per connection, for the size the transition table had
-- at the first insert, and keeps the plan whatever size comes next (until an ANALYZE of
-- those tables). Measured in a farm-sized database (100,000 advisories, 5,000 scans,
-- 1,000,000 findings; bench/ingest.py's farm_database):
--   * a connection whose first insert was large (20,000 findings) hashed both tables
--     whole at every later statement: a 212-finding report cost 11 ms of Postgres CPU
--     instead of 1.3, one INSERT per finding about a second per report;
--   * one whose first insert was a report hashed scans at every later one-row INSERT:
--     92 ms per report instead of 6.
-- Now the distinct ids are gathered into arrays first, and the lookups take those arrays
-- as parameters: their plan does not depend on the transition table, and is index
-- lookups, one per distinct id (the bench's report: 1 scan and 107 advisories, for 212
-- findings). Measured in that database, whatever the first insert: 1.29-1.45 ms per
-- report, 6.3-7.2 ms per report inserted row by row; with the lucky plan 0004 had cost
-- 1.1-1.2 and 5.5-5.7 (interleaved pairs: +0.03-0.05 ms for a report, even on a small
-- database).
--
-- Same messages and hints as 0004. A statement whose findings lack both a scan and an
-- advisory is refused naming the scan (0004 named whichever orphan it met first).

CREATE OR REPLACE FUNCTION findings_check_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scan_ids text[];
    advisory_ids text[];
    no_scan text;
    no_advisory text;
BEGIN
    SELECT array_agg(DISTINCT scan_id), array_agg(DISTINCT vulnerability_id)
      INTO scan_ids, advisory_ids
      FROM new_findings;
    SELECT (SELECT w.id FROM unnest(scan_ids) AS w(id)
             WHERE NOT EXISTS (SELECT FROM scans s WHERE s.id = w.id) LIMIT 1),
           (SELECT w.id FROM unnest(advisory_ids) AS w(id)
             WHERE NOT EXISTS (SELECT FROM vulnerabilities v WHERE v.id = w.id) LIMIT 1)
      INTO no_scan, no_advisory;
    IF no_scan IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('finding of scan %s: the scan is not recorded', no_scan),
            HINT = 'store the scan (store.start_scan) before its findings';
    END IF;
    IF no_advisory IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('finding of scan %s: advisory %s is not stored',
                             (SELECT scan_id FROM new_findings WHERE vulnerability_id = no_advisory
                               LIMIT 1), no_advisory),
            HINT = 'store the advisories of a report before its findings';
    END IF;
    RETURN NULL;
END $$;
