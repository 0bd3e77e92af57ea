-- Revert utcp:append_events from pg
BEGIN;
DROP FUNCTION utcp.append_events(text, bigint, text, bytea, uuid, jsonb);
DROP FUNCTION utcp.idempotent_result(text);
DROP FUNCTION utcp.event_content(uuid, text, bigint, text, jsonb, jsonb, text, timestamptz, timestamptz);
COMMIT;
