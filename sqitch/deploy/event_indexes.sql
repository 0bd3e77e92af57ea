-- Deploy utcp:event_indexes to pg
-- requires: stored_events
BEGIN;
-- The global reader pages through (tx_id, position): DESIGN.md §4.
CREATE INDEX stored_events_global_order ON utcp.stored_events (tx_id, position);
-- The queries people run: by symbol, type or category, in business time;
-- and by the time the store recorded the event.
CREATE INDEX stored_events_symbol_time ON utcp.stored_events (symbol, occurred_at)
    WHERE symbol IS NOT NULL;
CREATE INDEX stored_events_type_time ON utcp.stored_events (type, occurred_at);
CREATE INDEX stored_events_category_time ON utcp.stored_events (category, occurred_at);
CREATE INDEX stored_events_created_at ON utcp.stored_events (created_at);
COMMIT;
