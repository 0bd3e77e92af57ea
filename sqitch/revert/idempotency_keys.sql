-- Revert utcp:idempotency_keys from pg
BEGIN;
DROP TABLE utcp.idempotency_keys;
COMMIT;
