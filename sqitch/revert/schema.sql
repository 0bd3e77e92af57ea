-- Revert utcp:schema from pg
BEGIN;
DROP SCHEMA utcp;
COMMIT;
