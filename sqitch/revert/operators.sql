-- Revert utcp:operators from pg
BEGIN;
ALTER TABLE utcp.stored_events DROP COLUMN recorded_by;
REVOKE utcp_writer FROM utcp_operator;
REVOKE USAGE ON SCHEMA utcp FROM utcp_operator;
-- Cluster-wide: kept while another database still grants it something.
DO $$
BEGIN
  DROP ROLE IF EXISTS utcp_operator;
EXCEPTION WHEN dependent_objects_still_exist THEN
  RAISE NOTICE 'role utcp_operator kept: another database still uses it';
END $$;
COMMIT;
