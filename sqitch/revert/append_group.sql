-- Revert utcp:append_group from pg
BEGIN;

DROP FUNCTION utcp.append_group(text[], bigint[], text[], uuid[], jsonb);

COMMIT;
