-- Findings keep their integrity without a trigger per inserted row.
--
-- The two foreign keys of findings (scan_id -> scans ON DELETE CASCADE,
-- vulnerability_id -> vulnerabilities) ran two row-level triggers for every
-- finding row stored, each a lookup that also locked the referenced row
-- (FOR KEY SHARE): with 212 findings per report, 424 lookups and locks where
-- one report references one scan and ~100 advisories. That was the largest
-- single cost of the ingest (bench/README.md, "ingest").
--
-- The same guarantees, checked once per statement on the set of rows it wrote:
--   * a finding's scan and advisory exist (checked after every INSERT into findings,
--     whatever writes it, on the rows it wrote; an UPDATE cannot change them);
--   * deleting scans deletes their findings (the old ON DELETE CASCADE, also when
--     the scans go because their cluster or image is deleted);
--   * an advisory still referenced by a finding cannot be deleted;
--   * the keys findings refer to (scans.id, vulnerabilities.id) never change;
--   * TRUNCATE of scans or vulnerabilities is refused while findings remain.
-- A foreign key closes the race between an insert and a concurrent delete by
-- locking the referenced row per finding; here the rare side pays instead: a
-- delete of scans or advisories first takes a SHARE ROW EXCLUSIVE lock on
-- findings, so it waits for the ingests in flight, and the ingests that come
-- after it wait for it (then see the rows it deleted gone and refuse).

ALTER TABLE findings DROP CONSTRAINT findings_scan_id_fkey;
ALTER TABLE findings DROP CONSTRAINT findings_vulnerability_id_fkey;

CREATE FUNCTION findings_check_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    -- Outer joins, not NOT EXISTS: "NOT EXISTS .. OR NOT EXISTS .." is planned as two
    -- hashed subplans, each hashing its whole table, on every statement.
    SELECT n.scan_id, n.vulnerability_id, s.id IS NULL AS no_scan
      INTO orphan
      FROM new_findings n
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

CREATE TRIGGER findings_references_on_insert
    AFTER INSERT ON findings REFERENCING NEW TABLE AS new_findings
    FOR EACH STATEMENT EXECUTE FUNCTION findings_check_references();

-- A finding's scan and advisory never change: a row trigger that runs only when an
-- UPDATE tries. (Measured: a statement trigger on UPDATE with a transition table, the
-- other way, made every single-row INSERT into findings ~15 us of server CPU dearer.)
CREATE FUNCTION findings_refuse_new_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('finding %s/%s: its scan and advisory cannot change',
                         OLD.scan_id, OLD.ordinal),
        HINT = 'store the scan again instead';
END $$;

CREATE TRIGGER findings_references_are_fixed
    BEFORE UPDATE OF scan_id, vulnerability_id ON findings
    FOR EACH ROW
    WHEN (OLD.scan_id IS DISTINCT FROM NEW.scan_id
          OR OLD.vulnerability_id IS DISTINCT FROM NEW.vulnerability_id)
    EXECUTE FUNCTION findings_refuse_new_references();

-- Deleting scans deletes their findings, one statement per deleting statement.
CREATE FUNCTION scans_delete_findings() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE findings IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM findings f USING old_scans o WHERE f.scan_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER scans_delete_findings
    AFTER DELETE ON scans REFERENCING OLD TABLE AS old_scans
    FOR EACH STATEMENT EXECUTE FUNCTION scans_delete_findings();

-- An advisory referenced by a finding stays.
CREATE FUNCTION vulnerabilities_keep_referenced() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    referenced record;
BEGIN
    LOCK TABLE findings IN SHARE ROW EXCLUSIVE MODE;
    SELECT f.vulnerability_id, f.scan_id INTO referenced
      FROM findings f JOIN old_vulnerabilities o ON o.id = f.vulnerability_id
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('advisory %s is still referenced by findings of scan %s',
                             referenced.vulnerability_id, referenced.scan_id),
            HINT = 'delete the scans that found it first (store.prune_scans)';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER vulnerabilities_keep_referenced
    AFTER DELETE ON vulnerabilities REFERENCING OLD TABLE AS old_vulnerabilities
    FOR EACH STATEMENT EXECUTE FUNCTION vulnerabilities_keep_referenced();

-- The keys findings refer to never change (the row trigger runs only when one does).
CREATE FUNCTION refuse_key_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('%s.id cannot change (%s -> %s): findings refer to it',
                         TG_TABLE_NAME, OLD.id, NEW.id),
        HINT = 'insert a new row instead';
END $$;

CREATE TRIGGER scans_id_is_fixed
    BEFORE UPDATE OF id ON scans
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION refuse_key_change();
CREATE TRIGGER vulnerabilities_id_is_fixed
    BEFORE UPDATE OF id ON vulnerabilities
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION refuse_key_change();

-- TRUNCATE skips delete triggers: refuse it while findings would be left behind.
CREATE FUNCTION refuse_truncate_with_findings() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM findings) THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('cannot truncate %s: findings refer to it', TG_TABLE_NAME),
            HINT = 'truncate findings in the same statement';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER scans_truncate
    AFTER TRUNCATE ON scans
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_with_findings();
CREATE TRIGGER vulnerabilities_truncate
    AFTER TRUNCATE ON vulnerabilities
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_with_findings();

-- The ingest (scanqueue/store/results.py) sends each column of a report as one text
-- parameter, values separated by the ASCII unit separator, NULL as the record separator
-- alone, with a trailing separator (so that one empty string is one element, not none).
-- A plain SQL function: the planner inlines it.
CREATE FUNCTION ingest_column(packed text, n integer) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (string_to_array(packed, E'\x1f', E'\x1e'))[1:n];
