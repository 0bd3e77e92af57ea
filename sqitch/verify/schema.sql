-- Verify utcp:schema on pg
SELECT 1 / count(*) FROM pg_namespace WHERE nspname = 'utcp';
