-- One event through utcp.append_events(), as the store sends it (one call
-- per transaction, pgbench -M prepared). See bench/README.md.
SELECT * FROM utcp.append_events(
    ('pgbench-append-' || :client_id)::text, NULL::bigint, NULL::text, gen_random_uuid(),
    jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
