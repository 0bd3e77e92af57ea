-- Revert utcp:append_guarded from pg
-- Back to the append function that trusts its caller, exactly as
-- sqitch/deploy/append_events.sql (and stored_events.sql) defined it.
-- CREATE OR REPLACE keeps each function's owner and grants.
BEGIN;

REVOKE SELECT ON utcp.idempotency_keys FROM utcp_operator;
GRANT SELECT ON utcp.idempotency_keys TO utcp_reader, utcp_writer, utcp_projector;
GRANT EXECUTE ON FUNCTION utcp.event_content(uuid, text, bigint, text, jsonb, jsonb, text,
                                            timestamptz, timestamptz) TO PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.refuse_change() TO PUBLIC;

DROP FUNCTION utcp.append_events(text, bigint, text, uuid, jsonb);
DROP FUNCTION utcp.idempotent_result(text, text, bytea);
DROP FUNCTION utcp.log_limits();
DROP TABLE utcp.event_time_fields;

CREATE OR REPLACE FUNCTION utcp.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on utcp.% is refused: the audit log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'UT003',
              HINT = 'Record a correcting event instead of changing a stored one.';
END $$;


-- The canonical bytes of one event that its hash covers. Every field that
-- says what happened is in it, in a form that does not depend on session
-- settings (timestamps as epoch microseconds, jsonb in its normalised text).
-- Fields are joined with U+001F, which none of them can contain unescaped:
-- stream ids and types are validated, jsonb text escapes control characters.
CREATE OR REPLACE FUNCTION utcp.event_content(
    event_id uuid, stream_id text, stream_version bigint, type text, data jsonb,
    metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(concat_ws(E'\x1f',
        event_id::text, stream_id, stream_version::text, type, data::text,
        coalesce(metadata::text, ''), coalesce(symbol, ''),
        extract(epoch FROM occurred_at)::text, extract(epoch FROM created_at)::text), 'UTF8')
$$;

-- The one way to write the log. Writers get EXECUTE on this and nothing
-- else, so no writer can skip the version check or the hash chain.
--
-- p_expected: NULL any version, -1 the stream must exist, n >= 0 the
-- stream must be at version n now (0: must not exist).
-- p_request_id: a nonce per call (the same for all its retries), kept with
-- the key, so a retry can tell its own earlier commit from another call's.
-- p_events: a JSON array of {id, type, data, metadata, symbol, occurred_at}.
--
-- outcome 'w': written now. 'k': the key was used before; the row carries
-- that earlier result and fingerprint, nothing was written.
-- Errors: UT001 wrong expected version (DETAIL: the actual version),
-- UT002 log order hazard, 23505 on stored_events_pkey when a concurrent
-- writer took the version first.
CREATE OR REPLACE FUNCTION utcp.append_events(
    p_stream_id text, p_expected bigint, p_key text, p_fingerprint bytea, p_request_id uuid,
    p_events jsonb)
RETURNS TABLE (outcome "char", stream_id text, first_version bigint, last_version bigint,
               positions bigint[], request_id uuid, fingerprint bytea)
LANGUAGE plpgsql SECURITY DEFINER
-- Names below are schema-qualified and pg_catalog is searched first, so a
-- caller's search_path cannot redirect anything.
AS $$
DECLARE
    v_count   int := jsonb_array_length(p_events);
    v_now     timestamptz := now();
    v_version bigint;
    v_head    bytea;
    v_max_tx  xid8;
    v_hash    bytea;
    v_hashes  bytea[] := '{}';
    v_positions bigint[];
    r         record;
BEGIN
    IF v_count = 0 THEN
        RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = 'UT004';
    END IF;

    -- A key used before: return that result, write nothing.
    IF p_key IS NOT NULL THEN
        RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key);
        IF FOUND THEN RETURN; END IF;
    END IF;

    -- A committed transaction always has an id below our snapshot's xmax.
    -- A stored one at or above it means the log holds ids from another
    -- cluster's counter (a logical restore): new events would sort before
    -- old ones, and readers past those would never see them. One backward
    -- step of the (tx_id, position) index.
    SELECT max(e.tx_id) INTO v_max_tx FROM utcp.stored_events e;
    -- (Our own transaction's id may be at or above xmax: a caller that
    -- appends twice in one transaction is not a restore.)
    IF v_max_tx >= pg_snapshot_xmax(pg_current_snapshot())
       AND v_max_tx IS DISTINCT FROM pg_current_xact_id_if_assigned() THEN
        RAISE EXCEPTION 'the log holds transaction ids (up to %) ahead of this cluster''s', v_max_tx
            USING ERRCODE = 'UT002',
                  HINT = 'The log was restored logically into a new cluster: see docs/runbook.md, "Restores".';
    END IF;

    SELECT e.stream_version, e.hash INTO v_version, v_head
      FROM utcp.stored_events e
     WHERE e.stream_id = p_stream_id
     ORDER BY e.stream_version DESC LIMIT 1;
    v_version := coalesce(v_version, 0);

    IF p_expected IS NOT NULL
       AND ((p_expected = -1 AND v_version = 0) OR (p_expected >= 0 AND p_expected <> v_version)) THEN
        -- The stream may have moved because this very key was just written
        -- by a concurrent call: that is a duplicate, not a conflict.
        IF p_key IS NOT NULL THEN
            RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key);
            IF FOUND THEN RETURN; END IF;
        END IF;
        RAISE EXCEPTION 'stream % is at version %', p_stream_id, v_version
            USING ERRCODE = 'UT001', DETAIL = v_version::text;
    END IF;

    IF p_key IS NOT NULL THEN
        -- Claim the key before writing events: a concurrent call with the
        -- same key waits here, then sees ours.
        INSERT INTO utcp.idempotency_keys AS k
               (key, fingerprint, stream_id, first_version, last_version, first_event_id,
                request_id)
        VALUES (p_key, p_fingerprint, p_stream_id, v_version + 1, v_version + v_count,
                (p_events -> 0 ->> 'id')::uuid, p_request_id)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key);
            RETURN;
        END IF;
    END IF;

    -- hash(n) = sha256(hash(n-1) || content(n)), hash(0) empty: computed
    -- here, from the same typed values that are stored.
    IF v_count = 1 THEN
        INSERT INTO utcp.stored_events AS e
               (event_id, stream_id, stream_version, type, data, metadata, symbol,
                occurred_at, created_at, prev_hash, hash)
        SELECT x.id, p_stream_id, v_version + 1, x.type, x.data, x.metadata, x.symbol,
               coalesce(x.occurred_at, v_now), v_now, v_head,
               sha256(coalesce(v_head, '\x'::bytea) || utcp.event_content(
                   x.id, p_stream_id, v_version + 1, x.type, x.data, x.metadata, x.symbol,
                   coalesce(x.occurred_at, v_now), v_now))
          FROM jsonb_to_record(p_events -> 0) AS x(
                   id uuid, type text, data jsonb, metadata jsonb, symbol text,
                   occurred_at timestamptz)
        RETURNING ARRAY[e.position] INTO v_positions;
    ELSE
        v_hash := v_head;
        FOR r IN SELECT * FROM ROWS FROM (jsonb_to_recordset(p_events) AS (
                     id uuid, type text, data jsonb, metadata jsonb, symbol text,
                     occurred_at timestamptz))
                 WITH ORDINALITY AS x(id, type, data, metadata, symbol, occurred_at, ord)
        LOOP
            v_hash := sha256(coalesce(v_hash, '\x'::bytea) || utcp.event_content(
                r.id, p_stream_id, v_version + r.ord, r.type, r.data, r.metadata, r.symbol,
                coalesce(r.occurred_at, v_now), v_now));
            v_hashes[r.ord] := v_hash;
        END LOOP;
        WITH written AS (
            INSERT INTO utcp.stored_events AS e
                   (event_id, stream_id, stream_version, type, data, metadata, symbol,
                    occurred_at, created_at, prev_hash, hash)
            SELECT x.id, p_stream_id, v_version + x.ord, x.type, x.data, x.metadata, x.symbol,
                   coalesce(x.occurred_at, v_now), v_now,
                   CASE WHEN x.ord = 1 THEN v_head ELSE v_hashes[x.ord - 1] END,
                   v_hashes[x.ord]
              FROM ROWS FROM (jsonb_to_recordset(p_events) AS (
                       id uuid, type text, data jsonb, metadata jsonb, symbol text,
                       occurred_at timestamptz))
                   WITH ORDINALITY AS x(id, type, data, metadata, symbol, occurred_at, ord)
            RETURNING e.position, e.stream_version
        )
        SELECT array_agg(w.position ORDER BY w.stream_version) INTO v_positions FROM written w;
    END IF;

    outcome := 'w';
    stream_id := p_stream_id;
    first_version := v_version + 1;
    last_version := v_version + v_count;
    positions := v_positions;
    request_id := p_request_id;
    fingerprint := p_fingerprint;
    RETURN NEXT;
END $$;

-- The stored result of an idempotency key (no row when the key is unused).
CREATE FUNCTION utcp.idempotent_result(p_key text)
RETURNS TABLE (outcome "char", stream_id text, first_version bigint, last_version bigint,
               positions bigint[], request_id uuid, fingerprint bytea)
LANGUAGE sql STABLE AS $$
    SELECT 'k'::"char", k.stream_id, k.first_version, k.last_version,
           (SELECT array_agg(e.position ORDER BY e.stream_version)
              FROM utcp.stored_events e
             WHERE e.stream_id = k.stream_id
               AND e.stream_version BETWEEN k.first_version AND k.last_version),
           k.request_id, k.fingerprint
      FROM utcp.idempotency_keys k
     WHERE k.key = p_key
$$;

-- As sqitch/deploy/hash_v2.sql defined them.
-- The canonical bytes of one event under scheme 2. Timestamps as epoch
-- microseconds, jsonb in its normalised text: nothing depends on session
-- settings.
CREATE OR REPLACE FUNCTION utcp.event_content_v2(
    event_id uuid, stream_id text, stream_version bigint, type text, data jsonb,
    metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.convert_to('utcp-event-v2', 'UTF8')
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(event_id::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(stream_id), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(stream_version::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(type), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(data::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(metadata::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(symbol), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(
            (EXTRACT(epoch FROM occurred_at) OPERATOR(pg_catalog.*) 1000000)::bigint::text),
            '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(
            (EXTRACT(epoch FROM created_at) OPERATOR(pg_catalog.*) 1000000)::bigint::text),
            '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(recorded_by), '\xffffffff'::bytea)
$$;

-- hash(n) = sha256(hash(n-1) || content_v2(n)), hash(0) empty.
CREATE OR REPLACE FUNCTION utcp.event_hash_v2(
    prev_hash bytea, event_id uuid, stream_id text, stream_version bigint, type text,
    data jsonb, metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(COALESCE(prev_hash, '\x'::bytea) OPERATOR(pg_catalog.||)
        utcp.event_content_v2(event_id, stream_id, stream_version, type, data, metadata, symbol,
                              occurred_at, created_at, recorded_by))
$$;

COMMIT;
