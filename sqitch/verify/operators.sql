-- Verify utcp:operators on pg
SELECT 1 / count(*) FROM pg_catalog.pg_roles WHERE rolname = 'utcp_operator';
SELECT 1 / (has_schema_privilege('utcp_operator', 'utcp', 'USAGE'))::int;
SELECT recorded_by FROM utcp.stored_events WHERE false;
SELECT 1 / count(*) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attrdef d
    ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = 'utcp.stored_events'::regclass AND a.attname = 'recorded_by';
