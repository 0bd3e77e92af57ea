-- Deploy utcp:append_group to pg
-- requires: append_guarded
--
-- Group commit (issue 10): N independent append requests in one call, one
-- transaction and one WAL flush, each with its own outcome. The rules are
-- those of utcp.append_events(text, bigint, text, uuid, jsonb) (sqitch/
-- deploy/append_guarded.sql), checked with the same expressions: the same
-- validation and messages, derived columns, request fingerprint, hash
-- scheme 2, recorded_by, created_at never before the stream's previous
-- event, projection-* streams for operators only. What differs:
--
--   * a request's refusal is a row, not an error: everything that can refuse
--     a request is checked before any row of it is written, so one request
--     never fails, changes or delays another, and no subtransaction is
--     needed. Only what concerns the whole call raises: a malformed group
--     (22023), the log order hazard (UT002), and what no check can foresee
--     (a concurrent transaction writing the same event id or key: 23505,
--     after which the caller retries the requests one by one);
--   * requests apply in order: two requests to one stream behave as if sent
--     one after the other (the second sees the first's version and key);
--   * each stream and key of the group is locked (transaction advisory
--     locks pg_advisory_xact_lock(1970561904, hashtext(stream_id)) and
--     (1970561905, hashtext(key)), taken in one sorted order, so two groups
--     never deadlock on them) before heads and keys are read: concurrent
--     groups on the same stream queue instead of failing on
--     stored_events_pkey, and see each other's committed versions.
--     append_events takes no such lock: a direct append racing a group on
--     one stream can still make either fail with 23505, as two direct
--     appends can;
--   * the work is set-wise: one statement checks every event of every
--     request, one reads every head (and the log order hazard and, for a
--     group of two or more, the ids already in the log), one every key
--     (only when a request has one), one inserts every event, one every
--     key. The per-event work left in PL/pgSQL is the hash chain
--     (sequential by nature).
--
-- Each request is decided in append_events' order: its own fields ('i'),
-- the operator check ('a'), its events ('i'), its key ('k' or 'c'), the
-- expected version ('v'), its event ids ('d'), then it is written ('w').
BEGIN;

-- p_stream_ids, p_expected, p_keys, p_request_ids: one element per request,
-- arrays of the same length with lower bound 1. p_expected as in
-- append_events: NULL any version, -1 the stream must exist, n >= 0 the
-- stream must be at version n (0: must not exist); below -1 is refused
-- ('i', expected_version), where append_events took it as any version.
-- p_events: a JSON array
-- with one element per request, each what append_events takes as p_events
-- (a JSON array of {id, type, data, metadata, id_given}).
--
-- One row per request, in request order (request = its 1-based index):
--   outcome 'w' written now; 'k' the key's earlier result (this very
--   request, written before or earlier in this group): stream_id,
--   first_version, last_version, positions, request_id are that result's;
--   'v' wrong expected version: actual_version is the stream's version;
--   'c' the key was used for a different request (UT005's message);
--   'i' refused (UT004's message, "field: reason");
--   'd' an event id is already in the log or written by an earlier request
--   of this group: event_id names it (in a group of one, an id already in
--   the log raises 23505 on stored_events_event_id_key instead, as
--   append_events does: looking every id up first costs an index descent
--   per event, and there is no other request to protect);
--   'a' a projection-* stream without an operator's session (42501's message).
CREATE FUNCTION utcp.append_group(
    p_stream_ids text[], p_expected bigint[], p_keys text[], p_request_ids uuid[],
    p_events jsonb)
RETURNS TABLE (request int, outcome "char", stream_id text, first_version bigint,
               last_version bigint, positions bigint[], request_id uuid,
               actual_version bigint, event_id uuid, message text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET extra_float_digits = 1
AS $$
DECLARE
    l           record;
    v_n         int;
    v_who       text := session_user;
    v_deep      jsonpath;
    v_numbers   jsonpath;
    v_fractions jsonpath := 'strict $.** ? (@.type() == "number" && @ != @.floor())';
    -- per request (index i)
    q_problem   text[];
    q_count     int[];
    q_start     int[];      -- index of its first event in the e_ arrays
    q_at        timestamptz[]; -- created_at of its events
    q_outcome   "char"[];
    q_message   text[];
    q_first     bigint[];
    q_actual    bigint[];
    q_event     uuid[];
    q_ref       int[];      -- 'k' from an earlier request of this group
    q_fp        bytea[];
    q_pos_at    int[];      -- index of its first position in w_positions
    -- stored state, per request
    h_version   bigint[];
    h_hash      bytea[];
    h_at        timestamptz[];
    k_fp        bytea[];
    k_stream    text[];
    k_first     bigint[];
    k_last      bigint[];
    k_request   uuid[];
    k_positions text[];     -- bigint[] as text: no arrays of arrays
    -- per event of the group (index j), in request order
    e_problem_rq int[];
    e_problem   text[];
    e_ids       uuid[];
    e_types     text[];
    e_data      jsonb[];
    e_meta      jsonb[];
    e_symbols   text[];
    e_times     timestamptz[];
    e_fp        bytea[];
    e_part1     bytea[];
    e_part2     bytea[];
    e_rq        int[];      -- the request of each event
    e_size      bigint[];
    v_stored    uuid[];     -- ids of the group already in the log
    -- ids in more than one place of the group: the requests that carry each
    d_ids       uuid[];
    d_rqs       text[];     -- int[] as text
    -- rows to write
    w_j         int[] := '{}';
    w_version   bigint[] := '{}';
    w_prev      bytea[] := '{}';
    w_hash      bytea[] := '{}';
    w_positions bigint[];
    wk_req      int[] := '{}';
    wk_key      text[] := '{}';
    wk_fp       bytea[] := '{}';
    wk_stream   text[] := '{}';
    wk_first    bigint[] := '{}';
    wk_last     bigint[] := '{}';
    wk_event    uuid[] := '{}';
    wk_request  uuid[] := '{}';
    v_max_tx    xid8;
    v_clock     timestamptz;
    v_now       timestamptz;
    v_tail      bytea;
    v_hash      bytea;
    v_buf       bytea;
    v_version   bigint;
    v_expected  bigint;
    v_live      int := 0;   -- requests still to decide after the checks
    f           int;
    i           int;
    j           int;
    n           int;
    rqs         int[];
BEGIN
    l := utcp.log_limits();

    -- The group's shape: a programming error of the caller, not a request's.
    v_n := pg_catalog.cardinality(p_stream_ids);
    IF v_n IS NULL OR v_n = 0
       OR pg_catalog.array_ndims(p_stream_ids) <> 1 OR pg_catalog.array_lower(p_stream_ids, 1) <> 1
       OR pg_catalog.array_ndims(p_expected) IS DISTINCT FROM 1
       OR pg_catalog.array_lower(p_expected, 1) <> 1 OR pg_catalog.cardinality(p_expected) <> v_n
       OR pg_catalog.array_ndims(p_keys) IS DISTINCT FROM 1
       OR pg_catalog.array_lower(p_keys, 1) <> 1 OR pg_catalog.cardinality(p_keys) <> v_n
       OR pg_catalog.array_ndims(p_request_ids) IS DISTINCT FROM 1
       OR pg_catalog.array_lower(p_request_ids, 1) <> 1 OR pg_catalog.cardinality(p_request_ids) <> v_n
       OR pg_catalog.jsonb_typeof(p_events) IS DISTINCT FROM 'array'
       OR pg_catalog.jsonb_array_length(p_events) <> v_n THEN
        RAISE EXCEPTION 'utcp.append_group takes one or more requests: four arrays (lower bound 1) '
                        'and a JSON array of the same length'
            USING ERRCODE = '22023';
    END IF;
    IF v_n > l.max_batch_events THEN
        RAISE EXCEPTION '% requests in one group; the limit is %', v_n, l.max_batch_events
            USING ERRCODE = '22023';
    END IF;

    v_deep := pg_catalog.format('strict $.**{%s} ? (@.type() == "object" || @.type() == "array")',
                                l.max_depth)::jsonpath;
    v_numbers := pg_catalog.format(
        'strict $.** ? (@.type() == "number" && (@ >= 1e%1$s || @ <= -1e%1$s || (@ != 0 && @ > -1e-%1$s && @ < 1e-%1$s)))',
        l.max_number_exponent)::jsonpath;

    -- Every request and every event of the group, in one statement: the
    -- checks and derived columns of append_events, the same expressions and
    -- messages (events[k] counts within its request). Arrays of events are
    -- in request order, then batch order (see append_guarded.sql on why the
    -- plain aggregates keep that order: here too rows flow from ROWS FROM and
    -- a nested loop over jsonb_array_elements through materialized CTEs into
    -- one Agg). Events of a refused request are not checked.
    WITH req AS (
        SELECT r.i, r.s, r.k, r.x, CASE
            WHEN r.s IS NULL OR r.s ~ l.blank_pattern THEN 'stream_id: stream id must not be empty'
            WHEN pg_catalog.char_length(r.s) > l.max_id_length
                THEN pg_catalog.format('stream_id: stream id is longer than %s characters', l.max_id_length)
            WHEN r.s ~ l.control_pattern
                THEN 'stream_id: stream id must not contain control, invisible or bidirectional formatting characters'
            WHEN r.s IS NOT NFC NORMALIZED
                THEN 'stream_id: stream id must be in Unicode normal form NFC'
            WHEN r.k ~ l.blank_pattern THEN 'idempotency_key: idempotency key must not be empty'
            WHEN pg_catalog.char_length(r.k) > l.max_id_length
                THEN pg_catalog.format('idempotency_key: idempotency key is longer than %s characters', l.max_id_length)
            WHEN r.k ~ l.control_pattern
                THEN 'idempotency_key: idempotency key must not contain control, invisible or bidirectional formatting characters'
            WHEN r.k IS NOT NFC NORMALIZED
                THEN 'idempotency_key: idempotency key must be in Unicode normal form NFC'
            WHEN r.q IS NULL THEN 'request_id: a request id is required'
            WHEN r.v < -1
                THEN 'expected_version: must be NULL (any), -1 (the stream exists) or a version >= 0'
            WHEN pg_catalog.jsonb_typeof(r.x) IS DISTINCT FROM 'array'
                THEN 'events: events must be a JSON array'
            WHEN pg_catalog.jsonb_array_length(r.x) = 0
                THEN 'events: an append needs at least one event'
            WHEN pg_catalog.jsonb_array_length(r.x) > l.max_batch_events
                THEN pg_catalog.format('events: %s events in one append; the limit is %s',
                                       pg_catalog.jsonb_array_length(r.x), l.max_batch_events)
        END AS problem
          FROM ROWS FROM (pg_catalog.unnest(p_stream_ids), pg_catalog.unnest(p_keys),
                          pg_catalog.unnest(p_request_ids), pg_catalog.unnest(p_expected),
                          pg_catalog.jsonb_array_elements(p_events))
               WITH ORDINALITY AS r(s, k, q, v, x, i)
    ), ev AS (
        SELECT req.i AS rq, req.s AS sid, x.ord, x.e, x.e -> 'data' AS data, x.e -> 'metadata' AS meta,
               x.e ->> 'type' AS type, x.e ->> 'id' AS id,
               COALESCE((SELECT pg_catalog.jsonb_object_agg(f.type, f.time_field)
                           FROM utcp.event_time_fields f) ->> (x.e ->> 'type'),
                        'occurred_at') AS tf
          FROM req
          CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(req.x) WITH ORDINALITY AS x(e, ord)
         WHERE req.problem IS NULL
    ), sized AS MATERIALIZED (
        SELECT ev.*, ev.data -> ev.tf AS t, ev.data -> 'symbol' AS s,
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
            -- (jsonb_path_exists first: a document without a fraction, the
            -- usual case, skips the row source of jsonb_path_query)
            WHEN pg_catalog.jsonb_path_exists(c.data, v_fractions)
                 AND EXISTS (SELECT FROM pg_catalog.jsonb_path_query(c.data, v_fractions) AS n(v)
                          WHERE (n.v #>> '{}')::numeric
                                OPERATOR(pg_catalog.<>) ((n.v #>> '{}')::float8::text)::numeric)
                THEN pg_catalog.format(
                    'events[%s].data: a number has more significant digits than a reader '
                    'decodes exactly (a double: about 15 to 17); send it as a string', c.ord - 1)
            WHEN pg_catalog.jsonb_path_exists(c.meta, v_fractions)
                 AND EXISTS (SELECT FROM pg_catalog.jsonb_path_query(c.meta, v_fractions) AS n(v)
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
    SELECT (SELECT pg_catalog.array_agg(req.problem) FROM req),
           (SELECT pg_catalog.array_agg(CASE WHEN req.problem IS NULL
                                             THEN pg_catalog.jsonb_array_length(req.x) END)
              FROM req),
           pg_catalog.array_agg(c.rq) FILTER (WHERE c.problem IS NOT NULL),
           pg_catalog.array_agg(c.problem) FILTER (WHERE c.problem IS NOT NULL),
           pg_catalog.array_agg(c.rq),
           pg_catalog.array_agg(c.size),
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL THEN c.id::uuid END),
           pg_catalog.array_agg(c.type),
           pg_catalog.array_agg(c.data),
           pg_catalog.array_agg(NULLIF(c.meta, 'null'::jsonb)),
           pg_catalog.array_agg(c.s #>> '{}'),
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL THEN (c.t #>> '{}')::timestamptz END),
           -- each event's part of its request's fingerprint (append_events:
           -- type, data, metadata, and its id only where the caller chose it)
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL AND p_keys[c.rq] IS NOT NULL THEN
                      COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.type, 'UTF8')))
                   || pg_catalog.convert_to(c.type, 'UTF8'), E'\\xffffffff'::bytea)
                      || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.data_bytes)) || c.data_bytes,
                               E'\\xffffffff'::bytea)
                      || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.meta_bytes)) || c.meta_bytes,
                               E'\\xffffffff'::bytea)
                      || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(CASE WHEN (c.e ->> 'id_given')::boolean THEN pg_catalog.lower(c.id) END, 'UTF8')))
                   || pg_catalog.convert_to(CASE WHEN (c.e ->> 'id_given')::boolean THEN pg_catalog.lower(c.id) END, 'UTF8'), E'\\xffffffff'::bytea)
                  END),
           -- scheme 2's fields that do not depend on the stream's head, as
           -- in append_events: 'utcp-event-v2', id, stream | version |
           -- type, data, metadata, symbol
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL THEN
               pg_catalog.convert_to('utcp-event-v2', 'UTF8')
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(pg_catalog.lower(c.id), 'UTF8')))
                   || pg_catalog.convert_to(pg_catalog.lower(c.id), 'UTF8'), E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.sid, 'UTF8')))
                   || pg_catalog.convert_to(c.sid, 'UTF8'), E'\\xffffffff'::bytea) END),
           pg_catalog.array_agg(CASE WHEN c.problem IS NULL THEN
               COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.type, 'UTF8')))
                   || pg_catalog.convert_to(c.type, 'UTF8'), E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.data_bytes)) || c.data_bytes,
                                   E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(c.meta_bytes)) || c.meta_bytes,
                                   E'\\xffffffff'::bytea)
               || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(c.s #>> '{}', 'UTF8')))
                   || pg_catalog.convert_to(c.s #>> '{}', 'UTF8'), E'\\xffffffff'::bytea) END)
      INTO q_problem, q_count, e_problem_rq, e_problem, e_rq, e_size,
           e_ids, e_types, e_data, e_meta, e_symbols, e_times, e_fp, e_part1, e_part2
      FROM checked c;

    -- Each request's first refused event, then an id twice in one batch,
    -- then the batch's size: append_events' order.
    FOR n IN 1 .. COALESCE(pg_catalog.cardinality(e_problem_rq), 0) LOOP
        IF q_problem[e_problem_rq[n]] IS NULL THEN
            q_problem[e_problem_rq[n]] := e_problem[n];
        END IF;
    END LOOP;
    IF pg_catalog.cardinality(e_ids) > 1
       AND (SELECT pg_catalog.count(DISTINCT x) FROM pg_catalog.unnest(e_ids) AS x)
           <> pg_catalog.cardinality(pg_catalog.array_remove(e_ids, NULL)) THEN
        -- ids that occur more than once in the group, with the requests
        -- that carry them (twice in one request: that request is refused)
        SELECT pg_catalog.array_agg(z.id), pg_catalog.array_agg(z.rqs::text)
          INTO d_ids, d_rqs
          FROM (SELECT x.id, pg_catalog.array_agg(x.rq ORDER BY x.rq) AS rqs
                  FROM ROWS FROM (pg_catalog.unnest(e_ids), pg_catalog.unnest(e_rq)) AS x(id, rq)
                 WHERE x.id IS NOT NULL
                 GROUP BY x.id HAVING pg_catalog.count(*) > 1) z;
        FOR n IN 1 .. COALESCE(pg_catalog.cardinality(d_ids), 0) LOOP
            rqs := d_rqs[n]::int[];
            FOR j IN 2 .. pg_catalog.cardinality(rqs) LOOP
                IF rqs[j] = rqs[j - 1] AND q_problem[rqs[j]] IS NULL THEN
                    q_problem[rqs[j]] := 'events: an event id appears twice in the batch';
                END IF;
            END LOOP;
        END LOOP;
    END IF;
    j := 0;
    FOR i IN 1 .. v_n LOOP
        IF q_count[i] IS NOT NULL THEN
            q_start[i] := j + 1;
            j := j + q_count[i];
            v_live := v_live + 1;
            -- a batch can pass the byte limit only with more events than
            -- max_batch_bytes / max_event_bytes (the sum is a statement)
            IF q_problem[i] IS NULL AND q_count[i]::bigint * l.max_event_bytes > l.max_batch_bytes THEN
                SELECT pg_catalog.sum(z) INTO v_version
                  FROM pg_catalog.unnest(e_size[q_start[i] : j]) AS z;
                IF v_version > l.max_batch_bytes THEN
                    q_problem[i] := pg_catalog.format(
                        'events: the batch is %s bytes as stored; the limit is %s',
                        v_version, l.max_batch_bytes);
                END IF;
            END IF;
        END IF;
    END LOOP;

    FOR i IN 1 .. v_n LOOP
        -- (append_events: the request's own fields, then the operator
        -- check, then its events)
        IF q_count[i] IS NOT NULL AND pg_catalog.split_part(p_stream_ids[i], '-', 1) = 'projection'
           AND NOT pg_catalog.pg_has_role(v_who, 'utcp_operator', 'MEMBER') THEN
            q_outcome[i] := 'a';
            q_message[i] := pg_catalog.format(
                'only operators (members of utcp_operator) may append to %s', p_stream_ids[i]);
            v_live := v_live - 1;
        ELSIF q_problem[i] IS NOT NULL THEN
            q_outcome[i] := 'i';
            q_message[i] := q_problem[i];
            v_live := v_live - (q_count[i] IS NOT NULL)::int;
        END IF;
    END LOOP;

    IF v_live > 0 THEN
        -- Lock the group's streams and keys, in one order for every group.
        IF v_n = 1 THEN
            PERFORM pg_catalog.pg_advisory_xact_lock(1970561904, pg_catalog.hashtext(p_stream_ids[1]));
            IF p_keys[1] IS NOT NULL THEN
                PERFORM pg_catalog.pg_advisory_xact_lock(1970561905, pg_catalog.hashtext(p_keys[1]));
            END IF;
        ELSE
            PERFORM pg_catalog.pg_advisory_xact_lock(z.c, z.h)
              FROM (SELECT DISTINCT u.c, u.h
                      FROM (SELECT 1970561904 AS c, pg_catalog.hashtext(s) AS h
                              FROM pg_catalog.unnest(p_stream_ids) WITH ORDINALITY AS x(s, i)
                             WHERE q_outcome[x.i] IS NULL
                            UNION ALL
                            SELECT 1970561905, pg_catalog.hashtext(k)
                              FROM pg_catalog.unnest(p_keys) WITH ORDINALITY AS x(k, i)
                             WHERE q_outcome[x.i] IS NULL AND k IS NOT NULL) u
                     ORDER BY u.c, u.h) z;
        END IF;

        -- Every head, and the log order hazard (append_events: a stored
        -- tx_id at or above our snapshot's xmax means the log holds another
        -- cluster's ids), in one statement, read after the locks.
        IF v_n = 1 THEN
            -- (a group of one: the same, without the row source and the
            -- aggregate)
            -- An id already in the log is not looked up here: the insert
            -- raises 23505 on stored_events_event_id_key for it, as
            -- append_events does (the look-up costs an index descent per
            -- event; in a group of one the error fails no other request).
            SELECT ARRAY[h.stream_version], ARRAY[h.hash], ARRAY[h.created_at],
                   (SELECT pg_catalog.max(e.tx_id) FROM utcp.stored_events e)
              INTO h_version, h_hash, h_at, v_max_tx
              FROM (SELECT 1) AS one
              LEFT JOIN (SELECT e.stream_version, e.hash, e.created_at
                           FROM utcp.stored_events e
                          WHERE e.stream_id = p_stream_ids[1]
                          ORDER BY e.stream_version DESC LIMIT 1) h ON true;
        ELSE
            SELECT pg_catalog.array_agg(h.stream_version), pg_catalog.array_agg(h.hash),
                   pg_catalog.array_agg(h.created_at),
                   (SELECT pg_catalog.max(e.tx_id) FROM utcp.stored_events e),
                   -- ids already in the log (a concurrent writer of the same id
                   -- after this is what no check foresees: 23505 at the insert)
                   (SELECT pg_catalog.array_agg(e.event_id) FROM utcp.stored_events e
                     WHERE e.event_id = ANY (e_ids))
              INTO h_version, h_hash, h_at, v_max_tx, v_stored
              FROM pg_catalog.unnest(p_stream_ids) WITH ORDINALITY AS r(s, i)
              LEFT JOIN LATERAL (
                    SELECT e.stream_version, e.hash, e.created_at
                      FROM utcp.stored_events e
                     WHERE e.stream_id = r.s AND q_outcome[r.i] IS NULL
                     ORDER BY e.stream_version DESC LIMIT 1) h ON true;
        END IF;
        IF pg_catalog.cardinality(pg_catalog.array_remove(p_keys, NULL)) > 0 THEN
            -- The stored result of every key (none when no request has one).
            SELECT pg_catalog.array_agg(k.fingerprint), pg_catalog.array_agg(k.stream_id),
                   pg_catalog.array_agg(k.first_version), pg_catalog.array_agg(k.last_version),
                   pg_catalog.array_agg(k.request_id), pg_catalog.array_agg(k.positions::text)
              INTO k_fp, k_stream, k_first, k_last, k_request, k_positions
              FROM pg_catalog.unnest(p_keys) WITH ORDINALITY AS r(k, i)
              LEFT JOIN LATERAL (
                    SELECT i.fingerprint, i.stream_id, i.first_version, i.last_version, i.request_id,
                           (SELECT pg_catalog.array_agg(e.position ORDER BY e.stream_version)
                              FROM utcp.stored_events e
                             WHERE e.stream_id = i.stream_id
                               AND e.stream_version BETWEEN i.first_version AND i.last_version) AS positions
                      FROM utcp.idempotency_keys i
                     WHERE i.key = r.k AND q_outcome[r.i] IS NULL) k ON true;
        END IF;
        IF v_max_tx >= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
           AND v_max_tx IS DISTINCT FROM pg_catalog.pg_current_xact_id_if_assigned() THEN
            RAISE EXCEPTION 'the log holds transaction ids (up to %) ahead of this cluster''s', v_max_tx
                USING ERRCODE = 'UT002',
                      HINT = 'The log was restored logically into a new cluster: see docs/runbook.md, "Restores".';
        END IF;
        -- The insert's clock (append_events takes it just before its hash).
        v_clock := pg_catalog.clock_timestamp();
    END IF;

    -- Decide each request in order, as if it came alone after the ones
    -- before it: a written request moves its stream's head (kept at the
    -- stream's first request, f) and claims its key.
    FOR i IN 1 .. v_n LOOP
        CONTINUE WHEN q_outcome[i] IS NOT NULL;
        f := pg_catalog.array_position(p_stream_ids, p_stream_ids[i]);
        n := q_count[i];

        IF p_keys[i] IS NOT NULL THEN
            -- The request's fingerprint (append_events: role, stream, events).
            v_buf := pg_catalog.convert_to('utcp-request-v2', 'UTF8')
                || pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v_who, 'UTF8')))
                || pg_catalog.convert_to(v_who, 'UTF8')
                || pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(p_stream_ids[i], 'UTF8')))
                || pg_catalog.convert_to(p_stream_ids[i], 'UTF8');
            FOR j IN q_start[i] .. q_start[i] + n - 1 LOOP
                v_buf := v_buf || e_fp[j];
            END LOOP;
            q_fp[i] := pg_catalog.sha256(v_buf);
            -- An earlier request of this group that claimed the key.
            j := pg_catalog.array_position(wk_key, p_keys[i]);
            IF j IS NOT NULL THEN
                IF wk_fp[j] = q_fp[i] AND wk_stream[j] = p_stream_ids[i] THEN
                    q_outcome[i] := 'k';
                    q_ref[i] := wk_req[j];
                ELSE
                    q_outcome[i] := 'c';
                END IF;
            ELSIF k_stream[i] IS NOT NULL THEN
                IF k_fp[i] = q_fp[i] AND k_stream[i] = p_stream_ids[i] THEN
                    q_outcome[i] := 'k';
                ELSE
                    q_outcome[i] := 'c';
                END IF;
            END IF;
            IF q_outcome[i] = 'c' THEN
                q_message[i] := pg_catalog.format(
                    'idempotency key %s was already used for a different request '
                    '(another stream, other content, or another role''s)', p_keys[i]);
            END IF;
            CONTINUE WHEN q_outcome[i] IS NOT NULL;
        END IF;

        v_version := COALESCE(h_version[f], 0);
        v_expected := p_expected[i];
        IF v_expected IS NOT NULL
           AND ((v_expected = -1 AND v_version = 0) OR (v_expected >= 0 AND v_expected <> v_version)) THEN
            q_outcome[i] := 'v';
            q_actual[i] := v_version;
            q_message[i] := pg_catalog.format('stream %s is at version %s', p_stream_ids[i], v_version);
            CONTINUE;
        END IF;

        -- An id already in the log, or written by an earlier request here.
        IF v_stored IS NOT NULL AND e_ids[q_start[i] : q_start[i] + n - 1] && v_stored THEN
            FOR j IN q_start[i] .. q_start[i] + n - 1 LOOP
                IF e_ids[j] = ANY (v_stored) THEN
                    q_event[i] := e_ids[j];
                    EXIT;
                END IF;
            END LOOP;
            q_message[i] := pg_catalog.format('event id %s is already in the log', q_event[i]);
        ELSIF d_ids IS NOT NULL THEN
            FOR j IN 1 .. pg_catalog.cardinality(d_ids) LOOP
                rqs := d_rqs[j]::int[];
                IF i = ANY (rqs) AND EXISTS (
                       SELECT FROM pg_catalog.unnest(rqs) AS x(o)
                        WHERE x.o < i AND q_outcome[x.o] = 'w') THEN
                    q_event[i] := d_ids[j];
                    q_message[i] := pg_catalog.format(
                        'event id %s is written by an earlier request of this group', q_event[i]);
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        IF q_event[i] IS NOT NULL THEN
            q_outcome[i] := 'd';
            CONTINUE;
        END IF;

        -- Write: created_at never before the stream's previous event; the
        -- chain of scheme 2 (the bytes of utcp.event_hash_v2, as
        -- append_events writes them out).
        v_now := GREATEST(v_clock, h_at[f]);
        v_tail := COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM v_now) * 1000000)::bigint)::text, 'UTF8')))
                       || pg_catalog.convert_to(((EXTRACT(epoch FROM v_now) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
                  || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v_who, 'UTF8')))
                       || pg_catalog.convert_to(v_who, 'UTF8'), E'\\xffffffff'::bytea);
        v_hash := h_hash[f];
        q_pos_at[i] := pg_catalog.cardinality(w_j) + 1;
        FOR j IN q_start[i] .. q_start[i] + n - 1 LOOP
            v_version := v_version + 1;
            w_prev := w_prev || v_hash;
            v_hash := pg_catalog.sha256(COALESCE(v_hash, E'\\x'::bytea)
                || e_part1[j]
                || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v_version::text, 'UTF8')))
                       || pg_catalog.convert_to(v_version::text, 'UTF8'), E'\\xffffffff'::bytea)
                || e_part2[j]
                || COALESCE(pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(((EXTRACT(epoch FROM COALESCE(e_times[j], v_now)) * 1000000)::bigint)::text, 'UTF8')))
                       || pg_catalog.convert_to(((EXTRACT(epoch FROM COALESCE(e_times[j], v_now)) * 1000000)::bigint)::text, 'UTF8'), E'\\xffffffff'::bytea)
                || v_tail);
            w_j := w_j || j;
            w_version := w_version || v_version;
            w_hash := w_hash || v_hash;
        END LOOP;
        q_outcome[i] := 'w';
        q_at[i] := v_now;
        q_first[i] := COALESCE(h_version[f], 0) + 1;
        h_version[f] := v_version;
        h_hash[f] := v_hash;
        h_at[f] := v_now;
        IF p_keys[i] IS NOT NULL THEN
            wk_req := wk_req || i;
            wk_key := wk_key || p_keys[i];
            wk_fp := wk_fp || q_fp[i];
            wk_stream := wk_stream || p_stream_ids[i];
            wk_first := wk_first || q_first[i];
            wk_last := wk_last || v_version;
            wk_event := wk_event || e_ids[q_start[i]];
            wk_request := wk_request || p_request_ids[i];
        END IF;
    END LOOP;

    IF pg_catalog.cardinality(wk_key) > 0 THEN
        -- The keys first, as append_events claims its key before its events.
        INSERT INTO utcp.idempotency_keys
               (key, fingerprint, stream_id, first_version, last_version, first_event_id,
                request_id)
        SELECT * FROM ROWS FROM (pg_catalog.unnest(wk_key), pg_catalog.unnest(wk_fp),
                                 pg_catalog.unnest(wk_stream), pg_catalog.unnest(wk_first),
                                 pg_catalog.unnest(wk_last), pg_catalog.unnest(wk_event),
                                 pg_catalog.unnest(wk_request));
    END IF;
    IF pg_catalog.cardinality(w_j) = 1 THEN
        INSERT INTO utcp.stored_events AS e
               (event_id, stream_id, stream_version, type, data, metadata, symbol,
                occurred_at, created_at, prev_hash, hash, hash_version, recorded_by)
        VALUES (e_ids[w_j[1]], p_stream_ids[e_rq[w_j[1]]], w_version[1], e_types[w_j[1]],
                e_data[w_j[1]], e_meta[w_j[1]], e_symbols[w_j[1]],
                COALESCE(e_times[w_j[1]], q_at[e_rq[w_j[1]]]), q_at[e_rq[w_j[1]]],
                w_prev[1], w_hash[1], 2, v_who)
        RETURNING ARRAY[e.position] INTO w_positions;
    ELSIF pg_catalog.cardinality(w_j) > 1 THEN
        -- RETURNING yields the rows in the order they were inserted, which
        -- is unnest's: positions line up with w_j.
        WITH written AS (
            INSERT INTO utcp.stored_events AS e
                   (event_id, stream_id, stream_version, type, data, metadata, symbol,
                    occurred_at, created_at, prev_hash, hash, hash_version, recorded_by)
            SELECT e_ids[x.j], p_stream_ids[e_rq[x.j]], x.v, e_types[x.j], e_data[x.j], e_meta[x.j],
                   e_symbols[x.j], COALESCE(e_times[x.j], q_at[e_rq[x.j]]), q_at[e_rq[x.j]],
                   x.prev, x.hash, 2, v_who
              FROM ROWS FROM (pg_catalog.unnest(w_j), pg_catalog.unnest(w_version),
                              pg_catalog.unnest(w_prev), pg_catalog.unnest(w_hash))
                   AS x(j, v, prev, hash)
            RETURNING e.position
        )
        SELECT pg_catalog.array_agg(w.position) INTO w_positions FROM written w;
    END IF;

    FOR i IN 1 .. v_n LOOP
        request := i;
        outcome := q_outcome[i];
        stream_id := NULL;
        first_version := NULL;
        last_version := NULL;
        positions := NULL;
        request_id := NULL;
        actual_version := q_actual[i];
        event_id := q_event[i];
        message := q_message[i];
        IF outcome = 'w' THEN
            stream_id := p_stream_ids[i];
            first_version := q_first[i];
            last_version := q_first[i] + q_count[i] - 1;
            positions := w_positions[q_pos_at[i] : q_pos_at[i] + q_count[i] - 1];
            request_id := p_request_ids[i];
        ELSIF outcome = 'k' AND q_ref[i] IS NOT NULL THEN
            j := q_ref[i];
            stream_id := p_stream_ids[j];
            first_version := q_first[j];
            last_version := q_first[j] + q_count[j] - 1;
            positions := w_positions[q_pos_at[j] : q_pos_at[j] + q_count[j] - 1];
            request_id := p_request_ids[j];
        ELSIF outcome = 'k' THEN
            stream_id := k_stream[i];
            first_version := k_first[i];
            last_version := k_last[i];
            positions := k_positions[i]::bigint[];
            request_id := k_request[i];
        ELSIF outcome = 'v' THEN
            stream_id := p_stream_ids[i];
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION utcp.append_group(text[], bigint[], text[], uuid[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.append_group(text[], bigint[], text[], uuid[], jsonb) TO utcp_writer;

COMMIT;
