-- Revert utcp:service_keys from pg
BEGIN;
DROP TABLE utcp.api_keys;
COMMIT;
