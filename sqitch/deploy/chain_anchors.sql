-- Deploy utcp:chain_anchors to pg
-- requires: stored_events, append_events
BEGIN;

-- Each stream's hash chain shows a changed, re-ordered or removed event —
-- except the removal of a stream's newest events, which leaves a shorter
-- chain that is valid in itself. Anchors close that gap: each one is a
-- digest of every event's hash, in global order, up to a checkpoint,
-- chained to the previous anchor. Verification recomputes them, so any
-- anchored event that is changed or removed shows. Writers pay nothing:
-- anchors are taken on demand (`eventstore anchor`, from cron), and their
-- digests can be published outside the database, where the table's owner
-- cannot rewrite them.
CREATE TABLE utcp.chain_anchors (
    anchor_id        bigint GENERATED ALWAYS AS IDENTITY,
    through_tx       xid8        NOT NULL,  -- covers every event up to
    through_position bigint      NOT NULL,  -- (through_tx, through_position)
    events           bigint      NOT NULL,  -- events covered, from the start of the log
    digest           bytea       NOT NULL,  -- sha256(previous digest || sha256(hashes since))
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chain_anchors_pkey PRIMARY KEY (anchor_id)
);

CREATE TRIGGER chain_anchors_no_update_delete
    BEFORE UPDATE OR DELETE ON utcp.chain_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();
CREATE TRIGGER chain_anchors_no_truncate
    BEFORE TRUNCATE ON utcp.chain_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();

-- The digest of the events in (after, through] in global order.
CREATE FUNCTION utcp.log_digest(
    p_after_tx xid8, p_after_position bigint, p_through_tx xid8, p_through_position bigint)
RETURNS TABLE (events bigint, digest bytea)
LANGUAGE sql STABLE AS $$
    SELECT count(*), sha256(coalesce(string_agg(e.hash, '\x'::bytea ORDER BY e.tx_id, e.position),
                                      '\x'::bytea))
      FROM utcp.stored_events e
     WHERE (e.tx_id, e.position) > (p_after_tx, p_after_position)
       AND (e.tx_id, e.position) <= (p_through_tx, p_through_position)
$$;

-- Take an anchor over everything readers can see now (the same horizon as
-- the global reader, so no event can later appear before it). Returns the
-- new anchor, or the latest one when nothing new was committed.
CREATE FUNCTION utcp.anchor_log() RETURNS SETOF utcp.chain_anchors
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

REVOKE ALL ON utcp.chain_anchors FROM PUBLIC;
GRANT SELECT ON utcp.chain_anchors TO utcp_reader, utcp_writer, utcp_projector;
REVOKE ALL ON FUNCTION utcp.anchor_log() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.anchor_log() TO utcp_writer, utcp_projector;

COMMIT;
