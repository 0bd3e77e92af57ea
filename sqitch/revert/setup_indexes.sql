-- Revert utcp:setup_indexes from pg
BEGIN;
DROP INDEX utcp.stored_events_setup_strategy;
DROP INDEX utcp.stored_events_setup_symbol;
DROP INDEX utcp.stored_events_setup_time;
DELETE FROM utcp.event_time_fields WHERE type IN ('TradeSetupRevised', 'AssistantEvent');
COMMIT;
