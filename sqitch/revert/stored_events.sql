-- Revert utcp:stored_events from pg
-- Dropping the table is the one way to remove the log: a revert is an
-- operator's decision, taken with a backup at hand (docs/runbook.md).
BEGIN;
DROP TABLE utcp.stored_events;
DROP FUNCTION utcp.refuse_change();
COMMIT;
