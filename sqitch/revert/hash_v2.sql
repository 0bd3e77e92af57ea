-- Revert utcp:hash_v2 from pg
BEGIN;
DROP FUNCTION utcp.event_hash_v2(bytea, uuid, text, bigint, text, jsonb, jsonb, text,
                                 timestamptz, timestamptz, text);
DROP FUNCTION utcp.event_content_v2(uuid, text, bigint, text, jsonb, jsonb, text,
                                    timestamptz, timestamptz, text);
DROP FUNCTION utcp.hash_field(text);
ALTER TABLE utcp.stored_events DROP COLUMN hash_version;
COMMIT;
