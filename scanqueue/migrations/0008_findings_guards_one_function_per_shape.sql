-- One trigger function per shape of guard, not one per table (0004 wrote one per table).
--
-- 0004 keeps findings' references with triggers. Two of its pairs are one shape each:
--   * scans_delete_findings (deleting scans deletes their findings) and
--     vulnerabilities_keep_referenced (an advisory in use cannot be deleted): after a
--     DELETE on a table findings refer to, lock findings, then act on the findings that
--     refer to the deleted rows (delete them, or refuse);
--   * findings_refuse_new_references and refuse_key_change: refuse an UPDATE with a
--     foreign_key_violation naming the row.
-- Each pair becomes one function; what differs per table is in the trigger's arguments
-- (TG_ARGV). Trigger names, timing, locks, messages and hints are those of 0004, so the
-- triggers still fire in the same order and say the same thing.

CREATE FUNCTION findings_referenced_rows_deleted() RETURNS trigger
    LANGUAGE plpgsql AS $$
-- TG_ARGV[0]: the column of findings that refers to the deleted rows' id;
-- TG_ARGV[1]: 'cascade' (delete those findings) or 'restrict' (refuse while one remains);
-- TG_ARGV[2], TG_ARGV[3] ('restrict'): the message, a format() string given the deleted id
-- and the finding's scan, and the hint. The deleted rows are the transition table old_rows.
DECLARE
    referenced record;
    found_rows integer;
BEGIN
    IF TG_NARGS < 2 OR TG_ARGV[1] NOT IN ('cascade', 'restrict') THEN
        RAISE EXCEPTION 'trigger %: findings_referenced_rows_deleted(column, cascade|restrict)',
            TG_NAME;
    END IF;
    LOCK TABLE findings IN SHARE ROW EXCLUSIVE MODE;
    IF TG_ARGV[1] = 'cascade' THEN
        EXECUTE format('DELETE FROM findings f USING old_rows o WHERE f.%I = o.id', TG_ARGV[0]);
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT o.id, f.scan_id FROM findings f JOIN old_rows o ON o.id = f.%I LIMIT 1',
                   TG_ARGV[0])
       INTO referenced;
    GET DIAGNOSTICS found_rows = ROW_COUNT;  -- EXECUTE leaves FOUND alone
    IF found_rows > 0 THEN
        RAISE foreign_key_violation USING
            MESSAGE = format(TG_ARGV[2], referenced.id, referenced.scan_id),
            HINT = TG_ARGV[3];
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
-- TG_ARGV[0]: the message, a format() string; TG_ARGV[1]: the hint; each further argument
-- fills the next %s: 'table' (the table's name), 'old.<column>' or 'new.<column>'.
DECLARE
    old_row jsonb := to_jsonb(OLD);
    new_row jsonb := to_jsonb(NEW);
    args text[] := '{}';
    arg text;
BEGIN
    FOR i IN 2 .. TG_NARGS - 1 LOOP
        arg := TG_ARGV[i];
        IF arg = 'table' THEN
            args := args || TG_TABLE_NAME::text;
        ELSIF arg LIKE 'old.%' THEN
            args := args || (old_row ->> substr(arg, 5));
        ELSIF arg LIKE 'new.%' THEN
            args := args || (new_row ->> substr(arg, 5));
        ELSE
            RAISE EXCEPTION 'trigger %: refuse_update argument % is not table, old.<column> '
                            'or new.<column>', TG_NAME, arg;
        END IF;
    END LOOP;
    RAISE foreign_key_violation USING
        MESSAGE = format(TG_ARGV[0], VARIADIC args),
        HINT = TG_ARGV[1];
END $$;

DROP TRIGGER scans_delete_findings ON scans;
CREATE TRIGGER scans_delete_findings
    AFTER DELETE ON scans REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION findings_referenced_rows_deleted('scan_id', 'cascade');

DROP TRIGGER vulnerabilities_keep_referenced ON vulnerabilities;
CREATE TRIGGER vulnerabilities_keep_referenced
    AFTER DELETE ON vulnerabilities REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION findings_referenced_rows_deleted(
        'vulnerability_id', 'restrict',
        'advisory %s is still referenced by findings of scan %s',
        'delete the scans that found it first (store.prune_scans)');

DROP TRIGGER findings_references_are_fixed ON findings;
CREATE TRIGGER findings_references_are_fixed
    BEFORE UPDATE OF scan_id, vulnerability_id ON findings
    FOR EACH ROW
    WHEN (OLD.scan_id IS DISTINCT FROM NEW.scan_id
          OR OLD.vulnerability_id IS DISTINCT FROM NEW.vulnerability_id)
    EXECUTE FUNCTION refuse_update(
        'finding %s/%s: its scan and advisory cannot change', 'store the scan again instead',
        'old.scan_id', 'old.ordinal');

DROP TRIGGER scans_id_is_fixed ON scans;
CREATE TRIGGER scans_id_is_fixed
    BEFORE UPDATE OF id ON scans
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION refuse_update(
        '%s.id cannot change (%s -> %s): findings refer to it', 'insert a new row instead',
        'table', 'old.id', 'new.id');

DROP TRIGGER vulnerabilities_id_is_fixed ON vulnerabilities;
CREATE TRIGGER vulnerabilities_id_is_fixed
    BEFORE UPDATE OF id ON vulnerabilities
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION refuse_update(
        '%s.id cannot change (%s -> %s): findings refer to it', 'insert a new row instead',
        'table', 'old.id', 'new.id');

DROP FUNCTION scans_delete_findings();
DROP FUNCTION vulnerabilities_keep_referenced();
DROP FUNCTION findings_refuse_new_references();
DROP FUNCTION refuse_key_change();
