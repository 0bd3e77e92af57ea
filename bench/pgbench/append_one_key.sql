-- One event with an idempotency key through utcp.append_events(), as the
-- store sends an append with a key (pgbench -M prepared). See README.md here.
SELECT * FROM utcp.append_events(
    ('pgbench-append-key-' || :client_id)::text, NULL::bigint, gen_random_uuid()::text, gen_random_uuid(),
    jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
