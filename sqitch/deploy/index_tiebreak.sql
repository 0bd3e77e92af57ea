-- Deploy utcp:index_tiebreak to pg
-- requires: event_indexes
-- Every query the store and the trading adapter run stays flat as the log
-- grows (bench/README.md, "Cost as the log grows", has the plans):
--
-- * find_events orders by (occurred_at, position). The business-time
--   indexes of event_indexes end at occurred_at, so when business times tie
--   (a bulk import with one timestamp) PostgreSQL sorts the whole tied group
--   before it can return the first page. With position as the last column
--   the index gives the query's order itself: an index scan that stops at
--   the LIMIT. Each index is replaced under its own name (event_indexes'
--   verify checks the names; revert restores the old definitions).
-- * find_events(stream_id=...) (the adapter's list_trades of a portfolio)
--   had only the primary key (stream_id, stream_version): it sorted the
--   whole stream by business time. Now (stream_id, occurred_at, position).
-- * The adapter's "was this trade executed in this portfolio" check
--   (trading/sql.py TRADE_IN_STREAM) walked the whole portfolio stream
--   comparing data ->> 'trade_id': now a partial expression index on the
--   trades only.
--
-- CREATE INDEX (not CONCURRENTLY: sqitch runs each change in a
-- transaction) blocks appends while it builds: deploy it in a quiet window
-- on a large log (docs/runbook.md).
BEGIN;

CREATE INDEX stored_events_symbol_time_pos ON utcp.stored_events (symbol, occurred_at, position)
    WHERE symbol IS NOT NULL;
DROP INDEX utcp.stored_events_symbol_time;
ALTER INDEX utcp.stored_events_symbol_time_pos RENAME TO stored_events_symbol_time;

CREATE INDEX stored_events_type_time_pos ON utcp.stored_events (type, occurred_at, position);
DROP INDEX utcp.stored_events_type_time;
ALTER INDEX utcp.stored_events_type_time_pos RENAME TO stored_events_type_time;

CREATE INDEX stored_events_category_time_pos
    ON utcp.stored_events (category, occurred_at, position);
DROP INDEX utcp.stored_events_category_time;
ALTER INDEX utcp.stored_events_category_time_pos RENAME TO stored_events_category_time;

CREATE INDEX stored_events_stream_time ON utcp.stored_events (stream_id, occurred_at, position);

CREATE INDEX stored_events_trade_id ON utcp.stored_events (stream_id, (data ->> 'trade_id'))
    WHERE type = 'TradeExecuted';

COMMIT;
