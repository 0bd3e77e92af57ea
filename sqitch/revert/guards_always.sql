-- Revert utcp:guards_always from pg
BEGIN;

ALTER TABLE utcp.stored_events ENABLE TRIGGER stored_events_no_update_delete;
ALTER TABLE utcp.stored_events ENABLE TRIGGER stored_events_no_truncate;
ALTER TABLE utcp.idempotency_keys ENABLE TRIGGER idempotency_keys_no_update_delete;
ALTER TABLE utcp.idempotency_keys ENABLE TRIGGER idempotency_keys_no_truncate;
ALTER TABLE utcp.chain_anchors ENABLE TRIGGER chain_anchors_no_update_delete;
ALTER TABLE utcp.chain_anchors ENABLE TRIGGER chain_anchors_no_truncate;

COMMIT;
