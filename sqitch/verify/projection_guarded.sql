-- Verify utcp:projection_guarded on pg
SELECT projection, holder_pid, holder_nonce, requested_pid, requested_nonce, since
  FROM utcp.projection_leases WHERE false;
SELECT 1 / (NOT has_schema_privilege('utcp_projector', 'utcp', 'CREATE'))::int;
SELECT 1 / count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'utcp' AND c.relname = 'trades' AND c.relowner = n.nspowner;
SELECT 1 / (has_table_privilege('utcp_projector', 'utcp.trades', 'INSERT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_projector', 'utcp.trades', 'TRIGGER'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_reader', 'utcp.projection_leases', 'SELECT'))::int;
SELECT 1 / (has_function_privilege('utcp_projector', 'utcp.rebuild_swap(text, text, text)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_writer', 'utcp.rebuild_prepare(text)', 'EXECUTE'))::int;
