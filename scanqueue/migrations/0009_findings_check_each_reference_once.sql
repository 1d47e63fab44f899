-- The check after an INSERT into findings (0004's findings_check_references) looks each
-- distinct (scan, advisory) pair up once, not each finding.
--
-- 0004 joined every new finding to scans and to vulnerabilities: a report's 212 findings
-- were 212 scan lookups (all the same scan) and 212 advisory lookups (107 distinct in the
-- bench's report). The same query on the distinct pairs. Measured on the ingest of that
-- report, 6 interleaved pairs of fresh databases (bench/README.md, "ingest"):
--   * 100,000 advisories stored (a farm's database): server CPU per report
--     1.16-1.21 -> 1.09-1.14 ms;
--   * only the report's 107 (the bench's database): 1.00-1.06 -> 1.00-1.09 ms, the
--     DISTINCT costing about what the lookups it saves cost on so small a table.
-- (Two queries, scans then pairs, were slower on the small table: one more query per
-- statement.) Same query otherwise, so the same messages, hints and choice of orphan.

CREATE OR REPLACE FUNCTION findings_check_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    -- Outer joins, not NOT EXISTS: "NOT EXISTS .. OR NOT EXISTS .." is planned as two
    -- hashed subplans, each hashing its whole table, on every statement.
    SELECT n.scan_id, n.vulnerability_id, s.id IS NULL AS no_scan
      INTO orphan
      FROM (SELECT DISTINCT scan_id, vulnerability_id FROM new_findings) n
      LEFT JOIN scans s ON s.id = n.scan_id
      LEFT JOIN vulnerabilities v ON v.id = n.vulnerability_id
     WHERE s.id IS NULL OR v.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        IF orphan.no_scan THEN
            RAISE foreign_key_violation USING
                MESSAGE = format('finding of scan %s: the scan is not recorded', orphan.scan_id),
                HINT = 'store the scan (store.start_scan) before its findings';
        END IF;
        RAISE foreign_key_violation USING
            MESSAGE = format('finding of scan %s: advisory %s is not stored',
                             orphan.scan_id, orphan.vulnerability_id),
            HINT = 'store the advisories of a report before its findings';
    END IF;
    RETURN NULL;
END $$;
