-- Verify utcp:anchor_guarded on pg
SELECT pid, role_name, application_name, state, age_seconds
  FROM utcp.oldest_transaction() WHERE false;
-- Only operators take anchors; every function pins its search_path.
SELECT 1 / (NOT has_function_privilege('utcp_writer', 'utcp.take_anchor()', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_projector', 'utcp.take_anchor()', 'EXECUTE'))::int;
SELECT 1 / has_function_privilege('utcp_operator', 'utcp.take_anchor()', 'EXECUTE')::int;
SELECT 1 / has_function_privilege('utcp_reader', 'utcp.oldest_transaction()', 'EXECUTE')::int;
SELECT 1 / count(*) FROM pg_catalog.pg_proc
 WHERE oid IN ('utcp.take_anchor()'::regprocedure, 'utcp.anchor_log()'::regprocedure,
               'utcp.oldest_transaction()'::regprocedure,
               'utcp.log_digest(xid8, bigint, xid8, bigint)'::regprocedure)
HAVING count(*) FILTER (WHERE proconfig @> ARRAY['search_path=pg_catalog, pg_temp']) = 4;
