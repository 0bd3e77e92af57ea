-- Deploy utcp:setup_indexes to pg
-- requires: event_indexes append_guarded
--
-- CREATE INDEX (not CONCURRENTLY: Sqitch runs it in a transaction) holds
-- appends back while it builds: deploy it in a quiet moment on a big log.
--
-- The assistant's trade setups (trading/setups.py): each revision is a
-- TradeSetupRevised event in stream setup-<id>, whose business time
-- (occurred_at, derived by utcp.append_events) is the setup's first
-- createdAt. storage.list_trades walks these indexes newest first and
-- keeps the latest revision of each setup (an anti-join on the stream's
-- unique (stream_id, stream_version) index): never a scan of the log.
BEGIN;

-- Their business time, as trading/setups.py registers it (the default
-- field, named so that the registry and the database agree).
INSERT INTO utcp.event_time_fields (type, time_field) VALUES
    ('TradeSetupRevised', 'occurred_at'),
    ('AssistantEvent', 'occurred_at');

CREATE INDEX stored_events_setup_time ON utcp.stored_events (occurred_at DESC, stream_id)
    WHERE type = 'TradeSetupRevised';
CREATE INDEX stored_events_setup_symbol ON utcp.stored_events (symbol, occurred_at DESC, stream_id)
    WHERE type = 'TradeSetupRevised';
CREATE INDEX stored_events_setup_strategy
    ON utcp.stored_events ((data ->> 'strategy_id'), occurred_at DESC, stream_id)
    WHERE type = 'TradeSetupRevised';

COMMIT;
