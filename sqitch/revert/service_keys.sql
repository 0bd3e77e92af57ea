-- Revert utcp:service_keys from pg
BEGIN;
DROP TABLE utcp.api_keys;
DROP FUNCTION utcp.api_keys_revoke_once();
COMMIT;
