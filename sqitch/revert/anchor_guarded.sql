-- Revert utcp:anchor_guarded from pg
BEGIN;

-- pg_read_all_stats, if this change granted it (its comment says so).
DO $$
BEGIN
    IF pg_catalog.obj_description('utcp.oldest_transaction()'::pg_catalog.regprocedure,
                                  'pg_proc') LIKE '%anchor_guarded granted pg_read_all_stats%' THEN
        EXECUTE pg_catalog.format('REVOKE pg_read_all_stats FROM %I',
            (SELECT p.proowner::pg_catalog.regrole::text FROM pg_catalog.pg_proc p
              WHERE p.oid = 'utcp.oldest_transaction()'::pg_catalog.regprocedure));
    END IF;
END $$;
DROP FUNCTION utcp.oldest_transaction();

-- The definitions and grants of change chain_anchors.
CREATE OR REPLACE FUNCTION utcp.anchor_log() RETURNS SETOF utcp.chain_anchors
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_prev    utcp.chain_anchors;
    v_tx      xid8;
    v_pos     bigint;
    v_part    record;
BEGIN
    -- One anchorer at a time; writers and readers are not blocked.
    LOCK TABLE utcp.chain_anchors IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_prev FROM utcp.chain_anchors a ORDER BY a.anchor_id DESC LIMIT 1;
    SELECT e.tx_id, e.position INTO v_tx, v_pos
      FROM utcp.stored_events e
     WHERE e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx_id DESC, e.position DESC LIMIT 1;
    IF v_tx IS NULL OR (v_prev.anchor_id IS NOT NULL
                        AND (v_tx, v_pos) <= (v_prev.through_tx, v_prev.through_position)) THEN
        IF v_prev.anchor_id IS NOT NULL THEN RETURN NEXT v_prev; END IF;
        RETURN;
    END IF;
    SELECT * INTO v_part FROM utcp.log_digest(
        coalesce(v_prev.through_tx, '0'::xid8), coalesce(v_prev.through_position, 0), v_tx, v_pos);
    RETURN QUERY
    INSERT INTO utcp.chain_anchors AS a (through_tx, through_position, events, digest)
    VALUES (v_tx, v_pos, coalesce(v_prev.events, 0) + v_part.events,
            sha256(coalesce(v_prev.digest, '\x'::bytea) || v_part.digest))
    RETURNING a.*;
END $$;
REVOKE EXECUTE ON FUNCTION utcp.anchor_log() FROM utcp_operator;
GRANT EXECUTE ON FUNCTION utcp.anchor_log() TO utcp_writer, utcp_projector;
DROP FUNCTION utcp.take_anchor();

CREATE OR REPLACE FUNCTION utcp.log_digest(
    p_after_tx xid8, p_after_position bigint, p_through_tx xid8, p_through_position bigint)
RETURNS TABLE (events bigint, digest bytea)
LANGUAGE sql STABLE AS $$
    SELECT count(*), sha256(coalesce(string_agg(e.hash, '\x'::bytea ORDER BY e.tx_id, e.position),
                                      '\x'::bytea))
      FROM utcp.stored_events e
     WHERE (e.tx_id, e.position) > (p_after_tx, p_after_position)
       AND (e.tx_id, e.position) <= (p_through_tx, p_through_position)
$$;
REVOKE EXECUTE ON FUNCTION utcp.log_digest(xid8, bigint, xid8, bigint)
    FROM utcp_reader, utcp_writer, utcp_projector, utcp_operator;
GRANT EXECUTE ON FUNCTION utcp.log_digest(xid8, bigint, xid8, bigint) TO PUBLIC;

COMMIT;
