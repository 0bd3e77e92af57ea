-- Deploy utcp:append_guarded to pg
-- requires: append_events, operators, hash_v2
-- The database is the authority over what enters the log, whoever calls it.
--
-- utcp.append_events() trusted its caller: the symbol, the business time and
-- the idempotency fingerprint came from the client, and nothing checked the
-- payload. A writer calling it directly could store events no reader can
-- load, index a trade under no symbol, and claim another caller's key. Now:
--   * every rule of the log is checked here, with the limits of
--     utcp.log_limits() (the same as eventstore/limits.py; a test compares
--     them): identifiers, type names, event ids, sizes, depth, numbers and
--     times within what readers decode; refusals raise UT004 naming the field;
--   * symbol and occurred_at are derived from the payload
--     (utcp.event_time_fields says which field is a type's business time);
--   * the request fingerprint is computed here from what is stored, and a key
--     used before for another request raises UT005; nobody but operators
--     reads utcp.idempotency_keys;
--   * recorded_by is the session role; only operators append to projection-*;
--   * events are hashed under scheme 2 (the bytes of utcp.event_hash_v2);
--   * created_at is the insert's clock, never before the stream's previous event;
--   * every function pins search_path and qualifies what it calls.
BEGIN;

-- The limits of the log, in one place in SQL (eventstore/limits.py holds the
-- same numbers for the client, which checks them first).
CREATE FUNCTION utcp.log_limits(
    OUT max_id_length int, OUT max_type_length int, OUT max_event_bytes bigint,
    OUT max_batch_events int, OUT max_batch_bytes bigint, OUT max_depth int,
    OUT max_number_exponent int, OUT earliest timestamptz, OUT latest timestamptz,
    OUT type_pattern text, OUT time_pattern text, OUT blank_pattern text,
    OUT control_pattern text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    max_id_length := 200;
    max_type_length := 128;
    max_event_bytes := 1048576;
    max_batch_events := 10000;
    max_batch_bytes := 67108864;
    max_depth := 64;
    max_number_exponent := 300;
    earliest := '0001-01-02 00:00:00+00';
    latest := '9999-12-30 00:00:00+00';
    -- E'' strings: the same text whatever standard_conforming_strings says.
    -- No counted repetitions ({n,m}): PostgreSQL's regex engine pays for them
    -- on every match.
    type_pattern := E'^[A-Za-z][A-Za-z0-9_.:-]*$';
    time_pattern := E'^(?!0000)[0-9][0-9][0-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])'
                    || E'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9][0-9]?[0-9]?[0-9]?[0-9]?[0-9]?)?'
                    || E'(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])$';
    blank_pattern := E'^[ \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*$';
    -- What no identifier may contain: C0, DEL and C1 controls, and the
    -- invisible and bidirectional formatting characters (limits.CONTROL_PATTERN).
    control_pattern := E'[\\x01-\\x1f\\x7f-\\x9f\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u202a-\\u202e'
                       || E'\\u2060-\\u2064\\u2066-\\u2069\\ufeff]';
END $$;

-- The business time of an event is its type's own time field here
-- (eventstore.schemas registers the same), else its data's top-level
-- occurred_at, else the time it was recorded. Only the schema's owner
-- changes this table (through a Sqitch change).
CREATE TABLE utcp.event_time_fields (
    type       text NOT NULL,
    time_field text NOT NULL,
    CONSTRAINT event_time_fields_pkey PRIMARY KEY (type)
);
INSERT INTO utcp.event_time_fields (type, time_field) VALUES
    ('PortfolioOpened', 'opened_at'),
    ('CashDeposited', 'occurred_at'),
    ('CashWithdrawn', 'occurred_at'),
    ('TradeExecuted', 'executed_at'),
    ('TradeCancelled', 'occurred_at'),
    ('ProjectionEventSkipped', 'occurred_at');
REVOKE ALL ON utcp.event_time_fields FROM PUBLIC;
GRANT SELECT ON utcp.event_time_fields
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;

-- Scheme 1 content and the append-only trigger: pinned and qualified, the
-- same bytes as before.
CREATE OR REPLACE FUNCTION utcp.event_content(
    event_id uuid, stream_id text, stream_version bigint, type text, data jsonb,
    metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.convert_to(pg_catalog.concat_ws(E'\x1f',
        event_id::text, stream_id, stream_version::text, type, data::text,
        COALESCE(metadata::text, ''), COALESCE(symbol, ''),
        EXTRACT(epoch FROM occurred_at)::text, EXTRACT(epoch FROM created_at)::text), 'UTF8')
$$;

CREATE OR REPLACE FUNCTION utcp.refuse_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% on utcp.% is refused: the audit log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'UT003',
              HINT = 'Record a correcting event instead of changing a stored one.';
END $$;

-- Scheme 2, the same bytes (sqitch/deploy/hash_v2.sql; utcp.hash_field
-- encodes one field), written as one plpgsql expression: the SQL functions
-- of hash_v2 call each other eleven times per event, each call a new
-- executor and a search_path switch, about 0.3 ms an event; verify_chain
-- over a log of any size ran past the statement timeout. This is about
-- 15 us. tests/integration/test_hostile_append.py compares the two.
CREATE OR REPLACE FUNCTION utcp.event_content_v2(
    event_id uuid, stream_id text, stream_version bigint, type text, data jsonb,
    metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.convert_to('utcp-event-v2', 'UTF8')
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(event_id::text, 'UTF8')))
                   || pg_catalog.convert_to(event_id::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(stream_id, 'UTF8')))
                   || pg_catalog.convert_to(stream_id, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(stream_version::text, 'UTF8')))
                   || pg_catalog.convert_to(stream_version::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(type, 'UTF8')))
                   || pg_catalog.convert_to(type, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(data::text, 'UTF8')))
                   || pg_catalog.convert_to(data::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(metadata::text, 'UTF8')))
                   || pg_catalog.convert_to(metadata::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(symbol, 'UTF8')))
                   || pg_catalog.convert_to(symbol, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM occurred_at) * 1000000)::bigint)::text, 'UTF8')))
                   || pg_catalog.convert_to(((EXTRACT(epoch FROM occurred_at) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8')))
                   || pg_catalog.convert_to(((EXTRACT(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
        || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(recorded_by, 'UTF8')))
                   || pg_catalog.convert_to(recorded_by, 'UTF8'), E'\\xffffffff'::bytea);
END $$;

CREATE OR REPLACE FUNCTION utcp.event_hash_v2(
    prev_hash bytea, event_id uuid, stream_id text, stream_version bigint, type text,
    data jsonb, metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.sha256(COALESCE(prev_hash, E'\\x'::bytea) || utcp.event_content_v2(
        event_id, stream_id, stream_version, type, data, metadata, symbol, occurred_at,
        created_at, recorded_by));
END $$;

-- The stored result of an idempotency key, for a request with fingerprint
-- p_fingerprint to stream p_stream_id (no row when the key is unused).
-- A key used for another stream or other content raises UT005: a key never
-- answers for a request that is not the one it recorded.
DROP FUNCTION utcp.idempotent_result(text);
CREATE FUNCTION utcp.idempotent_result(p_key text, p_stream_id text, p_fingerprint bytea)
RETURNS TABLE (outcome "char", stream_id text, first_version bigint, last_version bigint,
               positions bigint[], request_id uuid)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k utcp.idempotency_keys;
BEGIN
    SELECT * INTO k FROM utcp.idempotency_keys i WHERE i.key = p_key;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF k.fingerprint IS DISTINCT FROM p_fingerprint OR k.stream_id IS DISTINCT FROM p_stream_id THEN
        RAISE EXCEPTION 'idempotency key % was already used for a different request '
                        '(another stream, other content, or another role''s)', p_key
            USING ERRCODE = 'UT005',
                  HINT = 'Use a new key for a new request.';
    END IF;
    RETURN QUERY
    SELECT 'k'::"char", k.stream_id, k.first_version, k.last_version,
           (SELECT pg_catalog.array_agg(e.position ORDER BY e.stream_version)
              FROM utcp.stored_events e
             WHERE e.stream_id = k.stream_id
               AND e.stream_version BETWEEN k.first_version AND k.last_version),
           k.request_id;
END $$;
REVOKE ALL ON FUNCTION utcp.idempotent_result(text, text, bytea) FROM PUBLIC;

-- The old signature took the fingerprint, the symbol and the business time
-- from its caller: no writer keeps that path. It stays only as a refusal,
-- with its grants (the verify script of change append_events checks them),
-- running as its caller, so an old client gets a clear error.
CREATE OR REPLACE FUNCTION utcp.append_events(
    p_stream_id text, p_expected bigint, p_key text, p_fingerprint bytea, p_request_id uuid,
    p_events jsonb)
RETURNS TABLE (outcome "char", stream_id text, first_version bigint, last_version bigint,
               positions bigint[], request_id uuid, fingerprint bytea)
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'utcp.append_events(text, bigint, text, bytea, uuid, jsonb) is retired: '
                    'the database now derives the fingerprint, symbol and business time'
        USING ERRCODE = '0A000',
              HINT = 'Call utcp.append_events(text, bigint, text, uuid, jsonb) (upgrade eventstore).';
END $$;

-- The one way to write the log. Writers get EXECUTE on this and nothing
-- else, so no writer can skip a check, the version, the key or the chain.
--
-- p_expected: NULL any version, -1 the stream must exist, n >= 0 the
-- stream must be at version n now (0: must not exist).
-- p_key: the idempotency key, or NULL.
-- p_request_id: a nonce per call (the same for all its retries), kept with
-- the key, so a retry can tell its own earlier commit from another call's.
-- p_events: a JSON array of {id, type, data, metadata, id_given}; id_given
-- says the caller chose the id (then it is part of the request fingerprint).
--
-- outcome 'w': written now. 'k': the key was used before for this very
-- request; the row carries that earlier result, nothing was written.
-- Errors: UT001 wrong expected version (DETAIL: the actual version),
-- UT002 log order hazard, UT004 a refused event (the message names the
-- field, e.g. events[2].data.executed_at), UT005 the key was used for a
-- different request, 42501 a projection-* stream without an operator's
-- session, 23505 on stored_events_pkey when a concurrent writer took the
-- version first.
CREATE FUNCTION utcp.append_events(
    p_stream_id text, p_expected bigint, p_key text, p_request_id uuid, p_events jsonb)
RETURNS TABLE (outcome "char", stream_id text, first_version bigint, last_version bigint,
               positions bigint[], request_id uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Its statements take the same shape of parameters on every call: plan them once.
SET plan_cache_mode = force_generic_plan
-- float8 as text in its shortest exact form, whatever the caller set.
SET extra_float_digits = 1
AS $$
DECLARE
    l           record;
    v_count     int;
    v_problem   text;
    v_size      bigint;
    v_ids       uuid[];
    v_types     text[];
    v_data      jsonb[];
    v_meta      jsonb[];
    v_symbols   text[];
    v_times     timestamptz[];
    v_fp        bytea;
    v_now       timestamptz;
    v_version   bigint;
    v_head      bytea;
    v_head_at   timestamptz;
    v_max_tx    xid8;
    v_hash      bytea;
    v_hashes    bytea[];
    v_part1     bytea[];
    v_part2     bytea[];
    v_tail      bytea;
    v_positions bigint[];
    v_who       text := session_user;
    v_deep      jsonpath;
    v_numbers   jsonpath;
    v_fractions jsonpath := 'strict $.** ? (@.type() == "number" && @ != @.floor())';
    n           int;
    r           record;
BEGIN
    l := utcp.log_limits();

    -- The request as a whole.
    v_problem := CASE
        WHEN p_stream_id IS NULL OR p_stream_id ~ l.blank_pattern THEN 'stream_id: stream id must not be empty'
        WHEN pg_catalog.char_length(p_stream_id) > l.max_id_length
            THEN pg_catalog.format('stream_id: stream id is longer than %s characters', l.max_id_length)
        WHEN p_stream_id ~ l.control_pattern
            THEN 'stream_id: stream id must not contain control, invisible or bidirectional formatting characters'
        WHEN p_stream_id IS NOT NFC NORMALIZED
            THEN 'stream_id: stream id must be in Unicode normal form NFC'
        WHEN p_key ~ l.blank_pattern THEN 'idempotency_key: idempotency key must not be empty'
        WHEN pg_catalog.char_length(p_key) > l.max_id_length
            THEN pg_catalog.format('idempotency_key: idempotency key is longer than %s characters', l.max_id_length)
        WHEN p_key ~ l.control_pattern
            THEN 'idempotency_key: idempotency key must not contain control, invisible or bidirectional formatting characters'
        WHEN p_key IS NOT NFC NORMALIZED
            THEN 'idempotency_key: idempotency key must be in Unicode normal form NFC'
        WHEN p_request_id IS NULL THEN 'request_id: a request id is required'
        WHEN pg_catalog.jsonb_typeof(p_events) IS DISTINCT FROM 'array'
            THEN 'events: events must be a JSON array'
    END;
    IF v_problem IS NULL THEN
        v_count := pg_catalog.jsonb_array_length(p_events);
        IF v_count = 0 THEN
            v_problem := 'events: an append needs at least one event';
        ELSIF v_count > l.max_batch_events THEN
            v_problem := pg_catalog.format('events: %s events in one append; the limit is %s',
                                           v_count, l.max_batch_events);
        END IF;
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'UT004';
    END IF;

    -- Only an operator's session records operator decisions.
    IF pg_catalog.split_part(p_stream_id, '-', 1) = 'projection'
       AND NOT pg_catalog.pg_has_role(v_who, 'utcp_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'only operators (members of utcp_operator) may append to %', p_stream_id
            USING ERRCODE = '42501';
    END IF;

    -- Each event, in one pass: the first refused one names its field; the
    -- others yield the columns the database derives (symbol, business time).
    -- Depth is checked before anything walks the whole document.
    -- (MATERIALIZED: each check runs once per event, not once per reference.)
    --
    -- Order: the aggregates below take no ORDER BY (each one was a sort of
    -- its own, about a tenth of a single-event append). They need none: the
    -- rows flow from jsonb_array_elements through two materialized CTEs
    -- (read back in the order they were written) into one plain Agg, with
    -- no join, sort or hash between, so every array is in the batch's order
    -- (the time fields come from a one-time subquery, not a join, for this
    -- reason). test_hostile_append checks a batch's order end to end.
    --
    -- Two shortcuts, both exact (test_hostile_append checks each at its
    -- boundary):
    --   * depth: the path finds a container at level max_depth below the
    --     root; it and its max_depth ancestors are max_depth + 1 nested
    --     containers, each with an opening and a closing bracket in the
    --     document's text: a text shorter than 2 * (max_depth + 1) characters
    --     (130) cannot hold one, and the walk is skipped;
    --   * numbers: jsonb writes a number as numeric does, in plain notation,
    --     never with an exponent: a number of at least 1e300 in absolute
    --     value has at least 301 digits before the point, a non-zero one
    --     below 1e-300 has its first non-zero digit at the 301st decimal or
    --     later ('0.' then at least 301 digits): a text of at most
    --     max_number_exponent characters (300) cannot hold one.
    --   A text's length in UTF-8 bytes is at least its length in
    --   characters, so its octet_length (computed anyway for the size
    --   limit) decides.
    v_deep := pg_catalog.format('strict $.**{%s} ? (@.type() == "object" || @.type() == "array")',
                                l.max_depth)::jsonpath;
    v_numbers := pg_catalog.format(
        'strict $.** ? (@.type() == "number" && (@ >= 1e%1$s || @ <= -1e%1$s || (@ != 0 && @ > -1e-%1$s && @ < 1e-%1$s)))',
        l.max_number_exponent)::jsonpath;
    WITH ev AS (
        SELECT x.ord, x.e, x.e -> 'data' AS data, x.e -> 'metadata' AS meta,
               x.e ->> 'type' AS type, x.e ->> 'id' AS id,
               COALESCE((SELECT pg_catalog.jsonb_object_agg(f.type, f.time_field)
                           FROM utcp.event_time_fields f) ->> (x.e ->> 'type'),
                        'occurred_at') AS tf
          FROM pg_catalog.jsonb_array_elements(p_events) WITH ORDINALITY AS x(e, ord)
    ), sized AS MATERIALIZED (
        SELECT ev.*, ev.data -> ev.tf AS t, ev.data -> 'symbol' AS s,
               -- the UTF-8 texts that are measured, fingerprinted and hashed:
               -- made once (convert_to checks and copies the whole text)
               CASE WHEN pg_catalog.jsonb_typeof(ev.data) = 'object'
                    THEN pg_catalog.convert_to(ev.data::text, 'UTF8') END AS data_bytes,
               CASE WHEN pg_catalog.jsonb_typeof(ev.meta) = 'object'
                    THEN pg_catalog.convert_to(ev.meta::text, 'UTF8') END AS meta_bytes
          FROM ev
    ), measured AS (
        SELECT z.*, pg_catalog.octet_length(z.data_bytes)
                    + COALESCE(pg_catalog.octet_length(z.meta_bytes), 0) AS size,
               pg_catalog.octet_length(z.data_bytes) AS data_size,
               pg_catalog.octet_length(z.meta_bytes) AS meta_size
          FROM sized z
    ), checked AS MATERIALIZED (
        SELECT c.*, CASE
            WHEN pg_catalog.jsonb_typeof(c.e) <> 'object'
                THEN pg_catalog.format('events[%s]: each event must be a JSON object', c.ord - 1)
            WHEN c.e - '{id,type,data,metadata,id_given}'::text[] <> '{}'::jsonb
                THEN pg_catalog.format(
                    'events[%s].%s: unknown field (an event is id, type, data, metadata, id_given; '
                    'the database derives the rest)',
                    c.ord - 1, (SELECT pg_catalog.min(k) FROM pg_catalog.jsonb_object_keys(
                        c.e - '{id,type,data,metadata,id_given}'::text[]) AS k))
            WHEN pg_catalog.jsonb_typeof(c.e -> 'id') IS DISTINCT FROM 'string'
                 OR pg_catalog.char_length(c.id) <> 36
                 -- 36 characters, hyphens at 9, 14, 19, 24 and nowhere else, hex
                 -- digits elsewhere: what ^hex+-hex+-hex+-hex+-hex+$ said with
                 -- those positions, without its five repeated groups (8 times
                 -- cheaper)
                 OR c.id ~ '[^-0-9a-fA-F]'
                 OR pg_catalog.octet_length(pg_catalog.replace(c.id, '-', '')) <> 32
                 OR pg_catalog.strpos(c.id, '-') <> 9
                 OR pg_catalog.substr(c.id, 14, 1) <> '-'
                 OR pg_catalog.substr(c.id, 19, 1) <> '-'
                 OR pg_catalog.substr(c.id, 24, 1) <> '-'
                THEN pg_catalog.format('events[%s].event_id: event_id must be a UUID', c.ord - 1)
            WHEN COALESCE(pg_catalog.jsonb_typeof(c.e -> 'id_given'), 'boolean') <> 'boolean'
                THEN pg_catalog.format('events[%s].id_given: must be true or false', c.ord - 1)
            WHEN pg_catalog.jsonb_typeof(c.e -> 'type') IS DISTINCT FROM 'string'
                 OR c.type !~ l.type_pattern
                 OR pg_catalog.char_length(c.type) > l.max_type_length
                THEN pg_catalog.format(
                    'events[%s].type: malformed event type: a letter, then up to %s letters, '
                    'digits or _ . : -', c.ord - 1, l.max_type_length - 1)
            WHEN c.size IS NULL
                THEN pg_catalog.format('events[%s].data: data must be a JSON object', c.ord - 1)
            WHEN pg_catalog.jsonb_typeof(c.meta) NOT IN ('object', 'null')
                THEN pg_catalog.format('events[%s].metadata: metadata must be a JSON object or null',
                                       c.ord - 1)
            WHEN c.size > l.max_event_bytes
                THEN pg_catalog.format('events[%s].data: event is %s bytes as stored; the limit is %s',
                                       c.ord - 1, c.size, l.max_event_bytes)
            WHEN c.data_size >= 2 * (l.max_depth + 1) AND pg_catalog.jsonb_path_exists(c.data, v_deep)
                THEN pg_catalog.format('events[%s].data: nested more than %s levels deep',
                                       c.ord - 1, l.max_depth)
            WHEN COALESCE(c.meta_size, 0) >= 2 * (l.max_depth + 1) AND pg_catalog.jsonb_path_exists(c.meta, v_deep)
                THEN pg_catalog.format('events[%s].metadata: nested more than %s levels deep',
                                       c.ord - 1, l.max_depth)
            WHEN c.data_size > l.max_number_exponent AND pg_catalog.jsonb_path_exists(c.data, v_numbers)
                THEN pg_catalog.format(
                    'events[%s].data: a number is out of range (non-zero numbers must be '
                    'between 1e-%s and 1e%s in absolute value)',
                    c.ord - 1, l.max_number_exponent, l.max_number_exponent)
            WHEN COALESCE(c.meta_size, 0) > l.max_number_exponent AND pg_catalog.jsonb_path_exists(c.meta, v_numbers)
                THEN pg_catalog.format(
                    'events[%s].metadata: a number is out of range (non-zero numbers must be '
                    'between 1e-%s and 1e%s in absolute value)',
                    c.ord - 1, l.max_number_exponent, l.max_number_exponent)
            -- A non-integer reads back as a double (msgspec, like most JSON
            -- readers): one that a double does not hold exactly, to its
            -- shortest form, would be kept here and read back changed.
            -- (Integers read back exactly; numbers out of range were refused
            -- above, so the cast cannot overflow.)
            WHEN EXISTS (SELECT FROM pg_catalog.jsonb_path_query(c.data, v_fractions) AS n(v)
                          WHERE (n.v #>> '{}')::numeric
                                OPERATOR(pg_catalog.<>) ((n.v #>> '{}')::float8::text)::numeric)
                THEN pg_catalog.format(
                    'events[%s].data: a number has more significant digits than a reader '
                    'decodes exactly (a double: about 15 to 17); send it as a string', c.ord - 1)
            WHEN EXISTS (SELECT FROM pg_catalog.jsonb_path_query(c.meta, v_fractions) AS n(v)
                          WHERE (n.v #>> '{}')::numeric
                                OPERATOR(pg_catalog.<>) ((n.v #>> '{}')::float8::text)::numeric)
                THEN pg_catalog.format(
                    'events[%s].metadata: a number has more significant digits than a reader '
                    'decodes exactly (a double: about 15 to 17); send it as a string', c.ord - 1)
            WHEN pg_catalog.jsonb_typeof(c.s) NOT IN ('string', 'null')
                 OR (c.s #>> '{}') ~ l.blank_pattern
                 OR pg_catalog.char_length(c.s #>> '{}') > l.max_id_length
                 OR (c.s #>> '{}') ~ l.control_pattern
                 OR (c.s #>> '{}') IS NOT NFC NORMALIZED
                THEN pg_catalog.format(
                    'events[%s].data.symbol: symbol must be non-empty text of at most %s '
                    'characters in Unicode NFC, without control, invisible or bidirectional '
                    'formatting characters', c.ord - 1, l.max_id_length)
            WHEN CASE WHEN c.t IS NULL OR pg_catalog.jsonb_typeof(c.t) = 'null' THEN false
                      WHEN pg_catalog.jsonb_typeof(c.t) <> 'string'
                           OR (c.t #>> '{}') !~ l.time_pattern THEN true
                      -- the day exists in its month (2023-02-29 does not)
                      ELSE pg_catalog.date_part('month', pg_catalog.make_date(
                               pg_catalog.substr(c.t #>> '{}', 1, 4)::int,
                               pg_catalog.substr(c.t #>> '{}', 6, 2)::int, 1)
                               + (pg_catalog.substr(c.t #>> '{}', 9, 2)::int - 1))
                           <> pg_catalog.substr(c.t #>> '{}', 6, 2)::int END
                THEN pg_catalog.format(
                    'events[%s].data.%s: must be an ISO 8601 timestamp with a zone '
                    '(YYYY-MM-DDTHH:MM:SS[.ffffff] then Z or +HH:MM)', c.ord - 1, c.tf)
            WHEN (c.t #>> '{}')::timestamptz NOT BETWEEN l.earliest AND l.latest
                THEN pg_catalog.format('events[%s].data.%s: must be between %s and %s (UTC), got %s',
                                       c.ord - 1, c.tf,
                                       pg_catalog.to_char(l.earliest AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                                       pg_catalog.to_char(l.latest AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                                       c.t #>> '{}')
        END AS problem
          FROM measured c
    )
    SELECT (pg_catalog.array_agg(c.problem) FILTER (WHERE c.problem IS NOT NULL))[1],
           pg_catalog.sum(c.size),
           pg_catalog.array_agg(c.id::uuid) FILTER (WHERE c.problem IS NULL),
           pg_catalog.array_agg(c.type),
           pg_catalog.array_agg(c.data),
           pg_catalog.array_agg(NULLIF(c.meta, 'null'::jsonb)),
           pg_catalog.array_agg(c.s #>> '{}'),
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL THEN (c.t #>> '{}')::timestamptz END),
           CASE WHEN p_key IS NOT NULL THEN
               -- The request, length-prefixed (utcp.hash_field): the role that
               -- makes it (a key claimed by one role never answers for
               -- another's request), the stream, then each event's type, data,
               -- metadata, and its id only where the caller chose it
               -- (generated ids differ between retries).
               pg_catalog.sha256(pg_catalog.convert_to('utcp-request-v2', 'UTF8')
                   || pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v_who, 'UTF8')))
                   || pg_catalog.convert_to(v_who, 'UTF8')
                   || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(p_stream_id, 'UTF8')))
                   || pg_catalog.convert_to(p_stream_id, 'UTF8'), E'\\xffffffff'::bytea)
                   || pg_catalog.string_agg(
                          COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.type, 'UTF8')))
                   || pg_catalog.convert_to(c.type, 'UTF8'), E'\\xffffffff'::bytea)
                          || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.data_bytes)) || c.data_bytes,
                                   E'\\xffffffff'::bytea)
                          || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.meta_bytes)) || c.meta_bytes,
                                   E'\\xffffffff'::bytea)
                          || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(CASE WHEN (c.e ->> 'id_given')::boolean THEN pg_catalog.lower(c.id) END, 'UTF8')))
                   || pg_catalog.convert_to(CASE WHEN (c.e ->> 'id_given')::boolean THEN pg_catalog.lower(c.id) END, 'UTF8'), E'\\xffffffff'::bytea),
                          E'\\x'::bytea)
                      -- (an aggregate runs even inside a CASE: the filter spares it)
                      FILTER (WHERE c.problem IS NULL AND p_key IS NOT NULL))
           END,
           -- scheme 2's fields of each event that do not depend on the stream's
           -- head (utcp.event_content_v2, written out: its nested calls cost a
           -- third of a millisecond per event)
           pg_catalog.array_agg(
               COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(pg_catalog.lower(c.id), 'UTF8')))
                   || pg_catalog.convert_to(pg_catalog.lower(c.id), 'UTF8'), E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(p_stream_id, 'UTF8')))
                   || pg_catalog.convert_to(p_stream_id, 'UTF8'), E'\\xffffffff'::bytea)) FILTER (WHERE c.problem IS NULL),
           pg_catalog.array_agg(
               COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.type, 'UTF8')))
                   || pg_catalog.convert_to(c.type, 'UTF8'), E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.data_bytes)) || c.data_bytes,
                                   E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.meta_bytes)) || c.meta_bytes,
                                   E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.s #>> '{}', 'UTF8')))
                   || pg_catalog.convert_to(c.s #>> '{}', 'UTF8'), E'\\xffffffff'::bytea)) FILTER (WHERE c.problem IS NULL)
      INTO v_problem, v_size, v_ids, v_types, v_data, v_meta, v_symbols, v_times, v_fp,
           v_part1, v_part2
      FROM checked c;
    -- An id twice in the batch (a DISTINCT aggregate above was a sort on
    -- every call; one event cannot repeat itself). v_ids holds every id
    -- when nothing was refused.
    IF v_problem IS NULL AND v_count > 1
       AND (SELECT pg_catalog.count(DISTINCT i) FROM pg_catalog.unnest(v_ids) AS i) <> v_count THEN
        v_problem := 'events: an event id appears twice in the batch';
    END IF;
    IF v_problem IS NULL AND v_size > l.max_batch_bytes THEN
        v_problem := pg_catalog.format('events: the batch is %s bytes as stored; the limit is %s',
                                       v_size, l.max_batch_bytes);
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'UT004';
    END IF;

    -- A key used before: that result if it was this request, else UT005.
    IF p_key IS NOT NULL THEN
        RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key, p_stream_id, v_fp);
        IF FOUND THEN RETURN; END IF;
    END IF;

    -- A committed transaction always has an id below our snapshot's xmax.
    -- A stored one at or above it means the log holds ids from another
    -- cluster's counter (a logical restore): new events would sort before
    -- old ones, and readers past those would never see them. One backward
    -- step of the (tx_id, position) index.
    SELECT pg_catalog.max(e.tx_id) INTO v_max_tx FROM utcp.stored_events e;
    -- (Our own transaction's id may be at or above xmax: a caller that
    -- appends twice in one transaction is not a restore.)
    IF v_max_tx >= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
       AND v_max_tx IS DISTINCT FROM pg_catalog.pg_current_xact_id_if_assigned() THEN
        RAISE EXCEPTION 'the log holds transaction ids (up to %) ahead of this cluster''s', v_max_tx
            USING ERRCODE = 'UT002',
                  HINT = 'The log was restored logically into a new cluster: see docs/runbook.md, "Restores".';
    END IF;

    SELECT e.stream_version, e.hash, e.created_at INTO v_version, v_head, v_head_at
      FROM utcp.stored_events e
     WHERE e.stream_id = p_stream_id
     ORDER BY e.stream_version DESC LIMIT 1;
    v_version := COALESCE(v_version, 0);

    IF p_expected IS NOT NULL
       AND ((p_expected = -1 AND v_version = 0) OR (p_expected >= 0 AND p_expected <> v_version)) THEN
        -- The stream may have moved because this very key was just written
        -- by a concurrent call: that is a duplicate, not a conflict.
        IF p_key IS NOT NULL THEN
            RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key, p_stream_id, v_fp);
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
        VALUES (p_key, v_fp, p_stream_id, v_version + 1, v_version + v_count, v_ids[1],
                p_request_id)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY SELECT * FROM utcp.idempotent_result(p_key, p_stream_id, v_fp);
            RETURN;
        END IF;
    END IF;

    -- The time of the insert (not of the transaction's start), and never
    -- before the stream's previous event: created_at does not go backwards
    -- within a stream.
    v_now := GREATEST(pg_catalog.clock_timestamp(), v_head_at);

    -- hash(n) = sha256(hash(n-1) || content_v2(n)), hash(0) empty: computed
    -- here, under scheme 2, from the same typed values that are stored.
    -- The bytes of utcp.event_hash_v2, written out here (a call per event
    -- costs more than the rest of the append); verify_chain recomputes every
    -- hash with utcp.event_hash_v2, so the two cannot drift apart unnoticed.
    v_tail := COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM v_now) * 1000000)::bigint)::text, 'UTF8')))
                   || pg_catalog.convert_to(((EXTRACT(epoch FROM v_now) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
              || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v_who, 'UTF8')))
                   || pg_catalog.convert_to(v_who, 'UTF8'), E'\\xffffffff'::bytea);
    v_hash := v_head;
    v_hashes := ARRAY[]::bytea[];
    FOR n IN 1 .. v_count LOOP
        v_hash := pg_catalog.sha256(COALESCE(v_hash, E'\\x'::bytea)
            || pg_catalog.convert_to('utcp-event-v2', 'UTF8') || v_part1[n]
            || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to((v_version + n)::text, 'UTF8')))
                   || pg_catalog.convert_to((v_version + n)::text, 'UTF8'), E'\\xffffffff'::bytea)
            || v_part2[n]
            || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM COALESCE(v_times[n], v_now)) * 1000000)::bigint)::text, 'UTF8')))
                   || pg_catalog.convert_to(((EXTRACT(epoch FROM COALESCE(v_times[n], v_now)) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
            || v_tail);
        v_hashes[n] := v_hash;
    END LOOP;

    IF v_count = 1 THEN
        -- One event (most appends): a plain INSERT ... RETURNING, without
        -- the CTE, the row source and the aggregate of a batch.
        INSERT INTO utcp.stored_events AS e
               (event_id, stream_id, stream_version, type, data, metadata, symbol,
                occurred_at, created_at, prev_hash, hash, hash_version, recorded_by)
        VALUES (v_ids[1], p_stream_id, v_version + 1, v_types[1], v_data[1], v_meta[1],
                v_symbols[1], COALESCE(v_times[1], v_now), v_now, v_head, v_hashes[1], 2, v_who)
        RETURNING ARRAY[e.position] INTO v_positions;
    ELSE
        WITH written AS (
            INSERT INTO utcp.stored_events AS e
                   (event_id, stream_id, stream_version, type, data, metadata, symbol,
                    occurred_at, created_at, prev_hash, hash, hash_version, recorded_by)
            SELECT v_ids[x.i], p_stream_id, v_version + x.i, v_types[x.i], v_data[x.i], v_meta[x.i],
                   v_symbols[x.i], COALESCE(v_times[x.i], v_now), v_now,
                   CASE WHEN x.i = 1 THEN v_head ELSE v_hashes[x.i - 1] END, v_hashes[x.i], 2, v_who
              FROM pg_catalog.generate_series(1, v_count) AS x(i)
            RETURNING e.position, e.stream_version
        )
        SELECT pg_catalog.array_agg(w.position ORDER BY w.stream_version) INTO v_positions FROM written w;
    END IF;

    outcome := 'w';
    stream_id := p_stream_id;
    first_version := v_version + 1;
    last_version := v_version + v_count;
    positions := v_positions;
    request_id := p_request_id;
    RETURN NEXT;
END $$;

REVOKE ALL ON FUNCTION utcp.append_events(text, bigint, text, uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.append_events(text, bigint, text, uuid, jsonb) TO utcp_writer;
REVOKE ALL ON FUNCTION utcp.log_limits() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.log_limits()
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;

-- Keys and fingerprints are the writers' business, not every role's: only
-- operators (and superusers) read them.
REVOKE SELECT ON utcp.idempotency_keys FROM utcp_reader, utcp_writer, utcp_projector;
-- Nothing in utcp is PUBLIC's: the scheme-1 content function keeps its
-- grants to the groups, the trigger function needs none (a trigger calls it
-- whatever the session's rights).
REVOKE ALL ON FUNCTION utcp.event_content(uuid, text, bigint, text, jsonb, jsonb, text,
                                          timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION utcp.refuse_change() FROM PUBLIC;
GRANT SELECT ON utcp.idempotency_keys TO utcp_operator;

COMMIT;
