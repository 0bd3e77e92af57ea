-- Deploy utcp:anchor_guarded to pg
-- requires: chain_anchors, operators
-- Anchors are an operator's act, never stale, never an unbounded wait;
-- status sees the transaction that holds readers back, whoever runs it.
--
-- * utcp.take_anchor() does the work: SECURITY DEFINER with a pinned
--   search_path, EXECUTE for utcp_operator only. It refuses a transaction
--   that is not READ COMMITTED (a REPEATABLE READ snapshot taken before the
--   latest anchor committed would chain the new one onto a stale one, and
--   anchors are append-only: verify would fail for ever). It takes its lock
--   first and reads the previous anchor in a later statement, whose fresh
--   snapshot sees every committed anchor. The lock (SHARE ROW EXCLUSIVE:
--   one anchorer at a time; plain readers of chain_anchors never conflict)
--   is waited for within the caller's lock_timeout, 10 s when that is 0;
--   then it fails naming the sessions in the way.
-- * utcp.anchor_log() stays the entry point, now a SECURITY INVOKER
--   wrapper: whoever calls it needs EXECUTE on take_anchor, so a writer gets
--   "permission denied". (utcp_writer keeps EXECUTE on the wrapper only
--   because the landed chain_anchors verify script checks that grant; it
--   gives nothing.)
-- * utcp.oldest_transaction(): the transaction that holds back the global
--   readers' horizon (pid, role, application, state, age; never its query),
--   for every group: pg_stat_activity hides other roles' transactions from
--   a non-superuser. It runs as its owner, which must be a superuser or a
--   member of pg_read_all_stats to see them; the deploy grants that when it
--   can (and records it in the function's comment, for the revert).
BEGIN;

-- The digest of the events in (after, through] in global order.
CREATE OR REPLACE FUNCTION utcp.log_digest(
    p_after_tx xid8, p_after_position bigint, p_through_tx xid8, p_through_position bigint)
RETURNS TABLE (events bigint, digest bytea)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.count(*),
           pg_catalog.sha256(COALESCE(pg_catalog.string_agg(e.hash, '\x'::bytea
                                                            ORDER BY e.tx_id, e.position),
                                      '\x'::bytea))
      FROM utcp.stored_events e
     WHERE (e.tx_id, e.position) OPERATOR(pg_catalog.>) (p_after_tx, p_after_position)
       AND (e.tx_id, e.position) OPERATOR(pg_catalog.<=) (p_through_tx, p_through_position)
$$;

CREATE FUNCTION utcp.take_anchor() RETURNS SETOF utcp.chain_anchors
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wait    text := pg_catalog.current_setting('lock_timeout');
    v_prev    utcp.chain_anchors;
    v_tx      xid8;
    v_pos     bigint;
    v_part    record;
    v_who     text;
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
    THEN
        RAISE EXCEPTION 'anchors are taken in a READ COMMITTED transaction, not %',
                        pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
              USING ERRCODE = 'invalid_transaction_state',
                    HINT = 'an older snapshot would chain the anchor onto a stale one: run '
                           'utcp.anchor_log() in its own transaction';
    END IF;
    IF v_wait OPERATOR(pg_catalog.=) '0' THEN
        PERFORM pg_catalog.set_config('lock_timeout', '10s', true);
    END IF;
    -- One anchorer at a time. SHARE ROW EXCLUSIVE conflicts with itself and
    -- with writes, not with ACCESS SHARE (SELECT) or ROW SHARE.
    BEGIN
        LOCK TABLE utcp.chain_anchors IN SHARE ROW EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        SELECT pg_catalog.string_agg(pg_catalog.format(
                   'pid %s (role %s, application %s, %s%s%s)',
                   l.pid, COALESCE(a.usename::text, '?'),
                   COALESCE(pg_catalog.quote_literal(a.application_name), '?'),
                   COALESCE(a.state, 'state unknown'),
                   CASE WHEN a.xact_start IS NULL THEN ''
                        ELSE pg_catalog.format(' in a transaction open for %s s',
                                 pg_catalog.round(EXTRACT(epoch FROM pg_catalog.clock_timestamp()
                                     OPERATOR(pg_catalog.-) a.xact_start), 1)) END,
                   CASE WHEN l.granted THEN '' ELSE ', itself waiting for ' || l.mode END),
                   '; ' ORDER BY l.pid)
          INTO v_who
          FROM pg_catalog.pg_locks l
          LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
         WHERE l.locktype OPERATOR(pg_catalog.=) 'relation'
           AND l.relation OPERATOR(pg_catalog.=) 'utcp.chain_anchors'::pg_catalog.regclass
           AND l.database OPERATOR(pg_catalog.=)
               (SELECT d.oid FROM pg_catalog.pg_database d
                 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
           AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
           AND l.mode OPERATOR(pg_catalog.=) ANY (ARRAY['RowExclusiveLock',
               'ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
               'ExclusiveLock', 'AccessExclusiveLock']);
        RAISE EXCEPTION 'anchor: gave up after lock_timeout=% waiting for utcp.chain_anchors, held by %',
                        pg_catalog.current_setting('lock_timeout'),
                        COALESCE(v_who, 'a session that has gone since')
              USING ERRCODE = 'lock_not_available',
                    HINT = 'let that session finish (or end it with pg_terminate_backend(pid)), '
                           'then anchor again';
    END;
    -- A new statement: in READ COMMITTED its snapshot is taken now, after
    -- the lock, so it sees every anchor committed before.
    SELECT * INTO v_prev FROM utcp.chain_anchors a ORDER BY a.anchor_id DESC LIMIT 1;
    SELECT e.tx_id, e.position INTO v_tx, v_pos
      FROM utcp.stored_events e
     WHERE e.tx_id OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
     ORDER BY e.tx_id DESC, e.position DESC LIMIT 1;
    PERFORM pg_catalog.set_config('lock_timeout', v_wait, true);
    IF v_tx IS NULL OR (v_prev.anchor_id IS NOT NULL
                        AND (v_tx, v_pos) OPERATOR(pg_catalog.<=)
                            (v_prev.through_tx, v_prev.through_position)) THEN
        IF v_prev.anchor_id IS NOT NULL THEN RETURN NEXT v_prev; END IF;
        RETURN;
    END IF;
    SELECT * INTO v_part FROM utcp.log_digest(
        COALESCE(v_prev.through_tx, '0'::xid8), COALESCE(v_prev.through_position, 0), v_tx, v_pos);
    RETURN QUERY
    INSERT INTO utcp.chain_anchors AS a (through_tx, through_position, events, digest, created_at)
    VALUES (v_tx, v_pos, COALESCE(v_prev.events, 0) OPERATOR(pg_catalog.+) v_part.events,
            pg_catalog.sha256(COALESCE(v_prev.digest, '\x'::bytea) OPERATOR(pg_catalog.||)
                              v_part.digest),
            pg_catalog.clock_timestamp())
    RETURNING a.*;
END $$;

-- The entry point, as before: the caller's own privileges decide.
CREATE OR REPLACE FUNCTION utcp.anchor_log() RETURNS SETOF utcp.chain_anchors
LANGUAGE sql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM utcp.take_anchor() $$;

CREATE FUNCTION utcp.oldest_transaction()
RETURNS TABLE (pid integer, role_name text, application_name text, state text,
               age_seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.pid, t.role_name, t.application_name, t.state,
           GREATEST(0, EXTRACT(epoch FROM pg_catalog.clock_timestamp()
                                 OPERATOR(pg_catalog.-) t.since))::double precision
      FROM (SELECT a.pid, a.usename::text AS role_name, a.application_name, a.state,
                   a.backend_xid AS xid, a.xact_start AS since
              FROM pg_catalog.pg_stat_activity a
             WHERE a.backend_xid IS NOT NULL
               AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
            UNION ALL
            SELECT NULL, p.owner::text, NULL, 'prepared', p.transaction, p.prepared
              FROM pg_catalog.pg_prepared_xacts p) t
     ORDER BY pg_catalog.age(t.xid) DESC
     LIMIT 1
$$;

REVOKE ALL ON FUNCTION utcp.log_digest(xid8, bigint, xid8, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.log_digest(xid8, bigint, xid8, bigint)
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;
REVOKE ALL ON FUNCTION utcp.take_anchor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.take_anchor() TO utcp_operator;
REVOKE EXECUTE ON FUNCTION utcp.anchor_log() FROM utcp_projector;
GRANT EXECUTE ON FUNCTION utcp.anchor_log() TO utcp_operator;
REVOKE ALL ON FUNCTION utcp.oldest_transaction() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.oldest_transaction()
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;

COMMENT ON FUNCTION utcp.oldest_transaction() IS
    'The transaction holding back the global readers (no query text); its owner needs '
    'superuser or pg_read_all_stats to see other roles'' sessions';

-- The owner must see every session. Granted here only when the deployer can.
DO $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') THEN
        BEGIN
            EXECUTE pg_catalog.format('GRANT pg_read_all_stats TO %I', current_user);
            COMMENT ON FUNCTION utcp.oldest_transaction() IS
                'The transaction holding back the global readers (no query text); '
                'anchor_guarded granted pg_read_all_stats to its owner';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'utcp.oldest_transaction() cannot see other roles'' sessions: '
                'GRANT pg_read_all_stats TO % (as a superuser), see docs/runbook.md', current_user;
        END;
    END IF;
END $$;

COMMIT;
