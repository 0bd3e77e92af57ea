-- Verify utcp:service_keys on pg
SELECT name, role, key_hash, created_at, revoked_at FROM utcp.api_keys WHERE false;
SELECT 1 / (has_table_privilege('utcp_writer', 'utcp.api_keys', 'SELECT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.api_keys', 'INSERT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_reader', 'utcp.api_keys', 'SELECT'))::int;
SELECT 1 / (has_table_privilege('utcp_operator', 'utcp.api_keys', 'INSERT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_operator', 'utcp.api_keys', 'DELETE'))::int;
SELECT 1 / count(*)::int FROM pg_trigger WHERE tgname = 'api_keys_revoke_once';
