-- Deploy utcp:guards_always to pg
-- requires: stored_events, idempotency_keys, chain_anchors
BEGIN;

-- The append-only triggers fire in every session, also one that sets
-- session_replication_role = replica (which a superuser can, and which
-- silences ordinary triggers): nobody edits or removes a record unnoticed.
ALTER TABLE utcp.stored_events ENABLE ALWAYS TRIGGER stored_events_no_update_delete;
ALTER TABLE utcp.stored_events ENABLE ALWAYS TRIGGER stored_events_no_truncate;
ALTER TABLE utcp.idempotency_keys ENABLE ALWAYS TRIGGER idempotency_keys_no_update_delete;
ALTER TABLE utcp.idempotency_keys ENABLE ALWAYS TRIGGER idempotency_keys_no_truncate;
ALTER TABLE utcp.chain_anchors ENABLE ALWAYS TRIGGER chain_anchors_no_update_delete;
ALTER TABLE utcp.chain_anchors ENABLE ALWAYS TRIGGER chain_anchors_no_truncate;

COMMIT;
