-- Revert utcp:roles from pg
BEGIN;
REVOKE USAGE ON SCHEMA utcp FROM utcp_reader, utcp_writer, utcp_projector;
-- Drop the roles unless another database of the cluster still grants them
-- something; that database's own revert drops them then.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['utcp_projector', 'utcp_writer', 'utcp_reader'] LOOP
    BEGIN
      EXECUTE format('DROP ROLE IF EXISTS %I', r);
    EXCEPTION WHEN dependent_objects_still_exist THEN
      RAISE NOTICE 'role % kept: another database still uses it', r;
    END;
  END LOOP;
END $$;
COMMIT;
