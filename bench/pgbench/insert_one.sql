-- The same event as append_one.sql, written by a plain INSERT into the same
-- table (as a superuser, no version check, no key, a dummy hash): what the
-- function costs on top. See bench/README.md.
INSERT INTO utcp.stored_events
       (event_id, stream_id, stream_version, type, data, metadata, symbol, occurred_at,
        prev_hash, hash)
SELECT gen_random_uuid(), 'pgbench-insert-' || gen_random_uuid(), 1, 'BenchTradeRecorded',
       e -> 'data', e -> 'metadata', e ->> 'symbol', now(), NULL, sha256('\x'::bytea)
  FROM jsonb_build_object(
           'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
           'metadata', '{"actor": "pgbench"}'::jsonb, 'symbol', 'AAPL') AS e;
