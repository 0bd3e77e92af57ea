-- Deploy utcp:projection_guarded to pg
-- requires: projections, operators
-- Only the schema's owner creates or owns anything in utcp. The projector
-- group loses CREATE on the schema and the ownership of the read models:
-- it keeps the DML a worker needs. The DDL of a rebuild (shadow tables,
-- the swap) runs in SECURITY DEFINER functions owned by the schema owner,
-- on a fixed set of table names. The projection's worker exclusion is a
-- lease only the projector can write (utcp.projection_leases), not an
-- advisory lock any role could take.
BEGIN;

REVOKE CREATE ON SCHEMA utcp FROM utcp_projector;

-- The read models belong to the schema's owner (the role that deployed
-- the schema: looked up, not assumed).
DO $$
DECLARE
  owner text := (SELECT pg_catalog.pg_get_userbyid(n.nspowner)
                   FROM pg_catalog.pg_namespace n WHERE n.nspname = 'utcp');
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['trades', 'positions', 'portfolios', 'projection_checkpoints'] LOOP
    EXECUTE pg_catalog.format('ALTER TABLE utcp.%I OWNER TO %I', t, owner);
    EXECUTE pg_catalog.format('REVOKE ALL ON utcp.%I FROM PUBLIC', t);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON utcp.%I TO utcp_projector', t);
  END LOOP;
END $$;

-- One row per projection (and per rebuild): the session that is its active
-- worker, and a session (a rebuild, `catch-up --wait`) queued to take it
-- over. A session is alive while it holds a session-level advisory lock on
-- its own random nonce and its backend started when it said
-- (utcp.projection_session_alive): no other session can fake that for its
-- pid, not even one that gets the pid again, and a killed worker's lease
-- is free at once.
CREATE TABLE utcp.projection_leases (
    projection        text        NOT NULL,
    holder_pid        integer,
    holder_nonce      bigint,
    holder_started    timestamptz,  -- pg_stat_activity.backend_start of the holder
    requested_pid     integer,
    requested_nonce   bigint,
    requested_started timestamptz,
    since             timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT projection_leases_pkey PRIMARY KEY (projection)
);
REVOKE ALL ON utcp.projection_leases FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON utcp.projection_leases TO utcp_projector;

-- Whether backend ``p_pid`` of this database, started at ``p_started``,
-- holds the session-level advisory lock on ``p_nonce``
-- (pg_advisory_lock(bigint): classid is the high half, objid the low half,
-- objsubid 1). SECURITY DEFINER to see every session's backend_start.
CREATE FUNCTION utcp.projection_session_alive(p_pid integer, p_nonce bigint,
                                              p_started timestamptz)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT p_pid IS NOT NULL AND p_nonce IS NOT NULL AND p_started IS NOT NULL
     AND EXISTS (
       SELECT FROM pg_catalog.pg_locks k
        WHERE k.locktype = 'advisory' AND k.granted AND k.pid = p_pid AND k.objsubid = 1
          AND k.database = (SELECT d.oid FROM pg_catalog.pg_database d
                             WHERE d.datname = pg_catalog.current_database())
          AND k.classid = ((p_nonce >> 32) & 4294967295)::oid
          AND k.objid = (p_nonce & 4294967295)::oid)
     AND EXISTS (
       SELECT FROM pg_catalog.pg_stat_activity a
        WHERE a.pid = p_pid AND a.backend_start = p_started)
$$;
REVOKE ALL ON FUNCTION utcp.projection_session_alive(integer, bigint, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.projection_session_alive(integer, bigint, timestamptz)
    TO utcp_projector;

-- For `project status` and messages (any group): the live holder and the
-- live requester of a lease, with what pg_stat_activity says of them.
CREATE FUNCTION utcp.projection_lease_holders(p_projection text)
RETURNS TABLE (role text, pid integer, usename text, application_name text, state text,
               since timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT s.role, s.pid, a.usename::text, a.application_name, a.state, s.since
    FROM utcp.projection_leases l
   CROSS JOIN LATERAL (VALUES ('holder', l.holder_pid, l.holder_nonce, l.holder_started,
                               l.since),
                              ('requester', l.requested_pid, l.requested_nonce,
                               l.requested_started, NULL::timestamptz))
         AS s(role, pid, nonce, started, since)
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = s.pid
   WHERE l.projection = p_projection
     AND utcp.projection_session_alive(s.pid, s.nonce, s.started)
$$;
REVOKE ALL ON FUNCTION utcp.projection_lease_holders(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.projection_lease_holders(text)
    TO utcp_reader, utcp_writer, utcp_projector;

-- The names of a rebuild's shadow tables for ``p_suffix``: the fixed set
-- of read models, and a suffix of lower-case letters and digits only.
CREATE FUNCTION utcp.rebuild_shadow_names(p_suffix text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_suffix IS NULL OR p_suffix !~ '^[a-z0-9]{1,32}$' OR p_suffix = 'old' THEN
    RAISE EXCEPTION 'not a rebuild suffix: %', p_suffix USING ERRCODE = '22023';
  END IF;
  RETURN ARRAY['trades__' || p_suffix, 'positions__' || p_suffix, 'portfolios__' || p_suffix];
END $$;
REVOKE ALL ON FUNCTION utcp.rebuild_shadow_names(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.rebuild_shadow_names(text) TO utcp_projector;

-- Fresh, empty shadow tables shaped like the live ones (LIKE … INCLUDING
-- ALL), owned and granted like them. Drops earlier ones of that suffix
-- (with whatever other roles built on them).
CREATE FUNCTION utcp.rebuild_prepare(p_suffix text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  live text[] := ARRAY['trades', 'positions', 'portfolios'];
  shadow text[] := utcp.rebuild_shadow_names(p_suffix);
  owner text := (SELECT pg_catalog.pg_get_userbyid(n.nspowner)
                   FROM pg_catalog.pg_namespace n WHERE n.nspname = 'utcp');
  i integer;
BEGIN
  FOR i IN 1 .. 3 LOOP
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS utcp.%I CASCADE', shadow[i]);
    EXECUTE pg_catalog.format('CREATE TABLE utcp.%I (LIKE utcp.%I INCLUDING ALL)',
                              shadow[i], live[i]);
    EXECUTE pg_catalog.format('ALTER TABLE utcp.%I OWNER TO %I', shadow[i], owner);
    EXECUTE pg_catalog.format('REVOKE ALL ON utcp.%I FROM PUBLIC', shadow[i]);
    EXECUTE pg_catalog.format('GRANT SELECT ON utcp.%I TO utcp_reader, utcp_writer', shadow[i]);
    EXECUTE pg_catalog.format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON utcp.%I TO utcp_projector', shadow[i]);
  END LOOP;
END $$;
REVOKE ALL ON FUNCTION utcp.rebuild_prepare(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.rebuild_prepare(text) TO utcp_projector;

-- Drop a rebuild's shadow tables (after a failure or a dry run).
CREATE FUNCTION utcp.rebuild_discard(p_suffix text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  shadow text[] := utcp.rebuild_shadow_names(p_suffix);
  i integer;
BEGIN
  FOR i IN 1 .. 3 LOOP
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS utcp.%I CASCADE', shadow[i]);
  END LOOP;
END $$;
REVOKE ALL ON FUNCTION utcp.rebuild_discard(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.rebuild_discard(text) TO utcp_projector;

-- The swap, in the caller's transaction (its lock_timeout bounds the
-- wait for readers' locks): live → <table>__old, shadow → live, the
-- rebuild's checkpoint copied into the live row (and its own row
-- removed), the old tables dropped, and the new indexes (and the
-- constraints they back) given the names of the old ones, matched by what
-- they index. Only the session holding projection ``p_projection``'s
-- lease may swap.
CREATE FUNCTION utcp.rebuild_swap(p_suffix text, p_projection text, p_rebuild_checkpoint text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  live text[] := ARRAY['trades', 'positions', 'portfolios'];
  shadow text[] := utcp.rebuild_shadow_names(p_suffix);
  owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'utcp');
  renames text[] := ARRAY[]::text[];
  r record;
  i integer;
BEGIN
  IF NOT EXISTS (SELECT FROM utcp.projection_leases l
                  WHERE l.projection = p_projection AND l.holder_pid = pg_catalog.pg_backend_pid()
                    AND utcp.projection_session_alive(l.holder_pid, l.holder_nonce,
                                                      l.holder_started)) THEN
    RAISE EXCEPTION 'projection %: this session does not hold its lease', p_projection
      USING ERRCODE = '55000';
  END IF;
  IF p_rebuild_checkpoint = p_projection THEN
    RAISE EXCEPTION 'the rebuild checkpoint must not be the live one' USING ERRCODE = '22023';
  END IF;
  EXECUTE pg_catalog.format(
      'LOCK TABLE utcp.%I, utcp.%I, utcp.%I, utcp.%I, utcp.%I, utcp.%I IN ACCESS EXCLUSIVE MODE',
      live[1], live[2], live[3], shadow[1], shadow[2], shadow[3]);
  FOR i IN 1 .. 3 LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                    WHERE c.oid = pg_catalog.to_regclass('utcp.' || pg_catalog.quote_ident(shadow[i]))
                      AND c.relkind = 'r' AND c.relowner = owner) THEN
      RAISE EXCEPTION 'no shadow table utcp.% to swap in', shadow[i] USING ERRCODE = '42P01';
    END IF;
    FOR r IN
      SELECT sc.relname::text AS from_name,
             (SELECT lc.relname::text
                FROM pg_catalog.pg_index li
                JOIN pg_catalog.pg_class lc ON lc.oid = li.indexrelid
               WHERE li.indrelid = pg_catalog.to_regclass('utcp.' || pg_catalog.quote_ident(live[i]))
                 AND li.indisunique = si.indisunique
                 AND pg_catalog.substr(pg_catalog.pg_get_indexdef(li.indexrelid),
                                       pg_catalog.strpos(pg_catalog.pg_get_indexdef(li.indexrelid), ' USING '))
                   = pg_catalog.substr(pg_catalog.pg_get_indexdef(si.indexrelid),
                                       pg_catalog.strpos(pg_catalog.pg_get_indexdef(si.indexrelid), ' USING '))
               ORDER BY lc.relname LIMIT 1) AS to_name
        FROM pg_catalog.pg_index si
        JOIN pg_catalog.pg_class sc ON sc.oid = si.indexrelid
       WHERE si.indrelid = pg_catalog.to_regclass('utcp.' || pg_catalog.quote_ident(shadow[i]))
    LOOP
      IF r.to_name IS NOT NULL AND r.to_name <> r.from_name THEN
        renames := renames || ARRAY[r.from_name, r.to_name];
      END IF;
    END LOOP;
  END LOOP;
  FOR i IN 1 .. 3 LOOP
    EXECUTE pg_catalog.format('ALTER TABLE utcp.%I RENAME TO %I', live[i], live[i] || '__old');
    EXECUTE pg_catalog.format('ALTER TABLE utcp.%I RENAME TO %I', shadow[i], live[i]);
  END LOOP;
  UPDATE utcp.projection_checkpoints AS l
     SET checkpoint_tx = b.checkpoint_tx,
         checkpoint_position = b.checkpoint_position,
         events_processed = b.events_processed,
         last_event_at = b.last_event_at, updated_at = pg_catalog.now(),
         last_error = NULL, last_error_at = NULL, last_error_event = NULL
    FROM utcp.projection_checkpoints AS b
   WHERE l.projection = p_projection AND b.projection = p_rebuild_checkpoint;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no checkpoint % to copy into %', p_rebuild_checkpoint, p_projection
      USING ERRCODE = '55000';
  END IF;
  FOR i IN 1 .. 3 LOOP
    EXECUTE pg_catalog.format('DROP TABLE utcp.%I CASCADE', live[i] || '__old');
  END LOOP;
  FOR i IN 1 .. COALESCE(pg_catalog.array_length(renames, 1), 0) / 2 LOOP
    EXECUTE pg_catalog.format('ALTER INDEX utcp.%I RENAME TO %I', renames[2 * i - 1], renames[2 * i]);
  END LOOP;
  DELETE FROM utcp.projection_checkpoints WHERE projection = p_rebuild_checkpoint;
END $$;
REVOKE ALL ON FUNCTION utcp.rebuild_swap(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.rebuild_swap(text, text, text) TO utcp_projector;

-- The sessions (but the caller's) holding a lock on a live read model or
-- on a shadow table of ``p_suffix``, or queued for one: what keeps a
-- rebuild's DDL waiting (an ACCESS EXCLUSIVE lock conflicts with every
-- other lock, and queues behind earlier requests): the sessions
-- pg_blocking_pids() would name while it waits.
CREATE FUNCTION utcp.projection_table_lockers(p_suffix text)
RETURNS TABLE (pid integer, usename text, application_name text, state text, lock_modes text,
               xact_seconds double precision)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT k.pid, a.usename::text, a.application_name, a.state,
         pg_catalog.string_agg(DISTINCT CASE WHEN k.granted THEN 'holds ' || k.mode
                                             ELSE 'waits for ' || k.mode END, ', '),
         EXTRACT(epoch FROM pg_catalog.clock_timestamp() - a.xact_start)::float8
    FROM pg_catalog.pg_locks k
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = k.pid
   WHERE k.locktype = 'relation' AND k.pid <> pg_catalog.pg_backend_pid()
     AND k.relation IN (
       SELECT c.oid FROM pg_catalog.pg_class c
        WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'utcp')
          AND c.relname = ANY (ARRAY['trades', 'positions', 'portfolios']
                               || utcp.rebuild_shadow_names(p_suffix)))
   GROUP BY k.pid, a.usename, a.application_name, a.state, a.xact_start
   ORDER BY k.pid
$$;
REVOKE ALL ON FUNCTION utcp.projection_table_lockers(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.projection_table_lockers(text) TO utcp_projector;

-- Owned by the schema's owner, like everything in utcp.
DO $$
DECLARE
  owner text := (SELECT pg_catalog.pg_get_userbyid(n.nspowner)
                   FROM pg_catalog.pg_namespace n WHERE n.nspname = 'utcp');
  f text;
BEGIN
  EXECUTE pg_catalog.format('ALTER TABLE utcp.projection_leases OWNER TO %I', owner);
  FOREACH f IN ARRAY ARRAY['utcp.projection_session_alive(integer, bigint, timestamptz)',
                           'utcp.projection_lease_holders(text)',
                           'utcp.rebuild_shadow_names(text)',
                           'utcp.rebuild_prepare(text)',
                           'utcp.rebuild_discard(text)',
                           'utcp.rebuild_swap(text, text, text)',
                           'utcp.projection_table_lockers(text)'] LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %I', f, owner);
  END LOOP;
END $$;

COMMIT;
