-- Verify utcp:append_guarded on pg
SELECT 1 / (has_function_privilege('utcp_writer', 'utcp.append_events(text, bigint, text, uuid, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_reader', 'utcp.append_events(text, bigint, text, uuid, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.idempotency_keys', 'SELECT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_reader', 'utcp.idempotency_keys', 'SELECT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_projector', 'utcp.idempotency_keys', 'SELECT'))::int;
-- Every function the append path runs pins its search_path.
SELECT 1 / (count(*) = 0)::int
  FROM pg_proc
 WHERE oid IN ('utcp.append_events(text, bigint, text, uuid, jsonb)'::regprocedure,
               'utcp.append_events(text, bigint, text, bytea, uuid, jsonb)'::regprocedure,
               'utcp.idempotent_result(text, text, bytea)'::regprocedure,
               'utcp.event_content(uuid, text, bigint, text, jsonb, jsonb, text, timestamptz, timestamptz)'::regprocedure,
               'utcp.refuse_change()'::regprocedure,
               'utcp.log_limits()'::regprocedure)
   AND NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false);
SELECT type, time_field FROM utcp.event_time_fields WHERE false;
SELECT max_event_bytes FROM utcp.log_limits();
-- Scheme 2's bytes are those of hash_v2: NULL and '' differ.
SELECT 1 / (utcp.event_content_v2(NULL, 's', 1, 't', '{}', NULL, NULL, now(), now(), NULL)
            <> utcp.event_content_v2(NULL, 's', 1, 't', '{}', NULL, '', now(), now(), NULL))::int;
