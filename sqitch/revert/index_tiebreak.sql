-- Revert utcp:index_tiebreak from pg
-- Back to event_indexes' definitions, under the same names.
BEGIN;

DROP INDEX utcp.stored_events_trade_id;
DROP INDEX utcp.stored_events_stream_time;

CREATE INDEX stored_events_symbol_time_old ON utcp.stored_events (symbol, occurred_at)
    WHERE symbol IS NOT NULL;
DROP INDEX utcp.stored_events_symbol_time;
ALTER INDEX utcp.stored_events_symbol_time_old RENAME TO stored_events_symbol_time;

CREATE INDEX stored_events_type_time_old ON utcp.stored_events (type, occurred_at);
DROP INDEX utcp.stored_events_type_time;
ALTER INDEX utcp.stored_events_type_time_old RENAME TO stored_events_type_time;

CREATE INDEX stored_events_category_time_old ON utcp.stored_events (category, occurred_at);
DROP INDEX utcp.stored_events_category_time;
ALTER INDEX utcp.stored_events_category_time_old RENAME TO stored_events_category_time;

COMMIT;
