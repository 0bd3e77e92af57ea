-- Revert utcp:append_events from pg
BEGIN;
DROP FUNCTION utcp.append_events(text, bigint, text, bytea, jsonb);
DROP FUNCTION utcp.idempotent_result(text);
DROP AGGREGATE utcp.hash_chain(bytea, bytea);
DROP FUNCTION utcp.hash_chain_step(bytea, bytea, bytea);
DROP FUNCTION utcp.event_content(uuid, text, bigint, text, jsonb, jsonb, text, timestamptz, timestamptz);
COMMIT;
