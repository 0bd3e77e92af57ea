-- Deploy utcp:operators to pg
-- requires: roles, stored_events
-- The operator group, and who wrote each event.
--
-- utcp_operator: the people (or jobs) that make operator decisions, such as
-- passing over an event a projection refuses, and take anchors. A member
-- may also append (it is a member of utcp_writer), but only an operator's
-- session may write an operator decision (enforced by utcp.append_events).
--   CREATE ROLE alice LOGIN; GRANT utcp_operator TO alice;
BEGIN;

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'utcp_operator') THEN
    CREATE ROLE utcp_operator NOLOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA utcp TO utcp_operator;
GRANT utcp_writer TO utcp_operator;

-- The database role of the session that appended the event (the login
-- role, also through SET ROLE and inside utcp.append_events, which runs as
-- its owner). NULL for events recorded before this change.
ALTER TABLE utcp.stored_events ADD COLUMN recorded_by text;
ALTER TABLE utcp.stored_events ALTER COLUMN recorded_by SET DEFAULT session_user;
COMMENT ON COLUMN utcp.stored_events.recorded_by IS
    'The session (login) role that appended the event; NULL before the operators change';

COMMIT;
