-- Deploy utcp:roles to pg
-- Group roles (NOLOGIN). Roles are cluster-wide, so several databases of one
-- cluster share them: create them only where they are missing.
-- An application logs in as its own role, made a member of one of these:
--   CREATE ROLE trading_app LOGIN; GRANT utcp_writer TO trading_app;
BEGIN;
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['utcp_reader', 'utcp_writer', 'utcp_projector'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END $$;
GRANT USAGE ON SCHEMA utcp TO utcp_reader, utcp_writer, utcp_projector;
COMMIT;
