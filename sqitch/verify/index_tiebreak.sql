-- Verify utcp:index_tiebreak on pg
-- Each business-time index ends with position (the tie-break), and the
-- stream and trade-id indexes exist.
SELECT 1 / (count(*) = 5)::int FROM pg_catalog.pg_indexes
 WHERE schemaname = 'utcp' AND tablename = 'stored_events'
   AND (indexname, indexdef) IN (
       ('stored_events_symbol_time',
        'CREATE INDEX stored_events_symbol_time ON utcp.stored_events USING btree (symbol, occurred_at, "position") WHERE (symbol IS NOT NULL)'),
       ('stored_events_type_time',
        'CREATE INDEX stored_events_type_time ON utcp.stored_events USING btree (type, occurred_at, "position")'),
       ('stored_events_category_time',
        'CREATE INDEX stored_events_category_time ON utcp.stored_events USING btree (category, occurred_at, "position")'),
       ('stored_events_stream_time',
        'CREATE INDEX stored_events_stream_time ON utcp.stored_events USING btree (stream_id, occurred_at, "position")'),
       ('stored_events_trade_id',
        'CREATE INDEX stored_events_trade_id ON utcp.stored_events USING btree (stream_id, ((data ->> ''trade_id''::text))) WHERE (type = ''TradeExecuted''::text)'));
