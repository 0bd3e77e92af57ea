-- Verify utcp:roles on pg
SELECT 1 / count(*) FROM pg_catalog.pg_roles WHERE rolname = 'utcp_reader';
SELECT 1 / count(*) FROM pg_catalog.pg_roles WHERE rolname = 'utcp_writer';
SELECT 1 / count(*) FROM pg_catalog.pg_roles WHERE rolname = 'utcp_projector';
SELECT 1 / (has_schema_privilege('utcp_writer', 'utcp', 'USAGE'))::int;
