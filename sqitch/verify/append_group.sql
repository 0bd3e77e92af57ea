-- Verify utcp:append_group on pg
SELECT 1 / (has_function_privilege('utcp_writer', 'utcp.append_group(text[], bigint[], text[], uuid[], jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_reader', 'utcp.append_group(text[], bigint[], text[], uuid[], jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_projector', 'utcp.append_group(text[], bigint[], text[], uuid[], jsonb)', 'EXECUTE'))::int;
-- Runs as its owner, with its search_path pinned; nothing is PUBLIC's.
SELECT 1 / count(*)
  FROM pg_proc
 WHERE oid = 'utcp.append_group(text[], bigint[], text[], uuid[], jsonb)'::regprocedure
   AND prosecdef
   AND proconfig @> ARRAY['search_path=pg_catalog, pg_temp']
   AND NOT coalesce(proacl::text[] && ARRAY['=X/' || pg_get_userbyid(proowner)], false);
