-- Revert utcp:event_indexes from pg
BEGIN;
DROP INDEX utcp.stored_events_global_order;
DROP INDEX utcp.stored_events_symbol_time;
DROP INDEX utcp.stored_events_type_time;
DROP INDEX utcp.stored_events_category_time;
DROP INDEX utcp.stored_events_created_at;
COMMIT;
