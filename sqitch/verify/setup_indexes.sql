-- Verify utcp:setup_indexes on pg
SELECT 1 / (to_regclass('utcp.stored_events_setup_time') IS NOT NULL)::int;
SELECT 1 / (to_regclass('utcp.stored_events_setup_symbol') IS NOT NULL)::int;
SELECT 1 / (to_regclass('utcp.stored_events_setup_strategy') IS NOT NULL)::int;
SELECT 1 / (count(*) = 2)::int FROM utcp.event_time_fields
 WHERE type IN ('TradeSetupRevised', 'AssistantEvent');
