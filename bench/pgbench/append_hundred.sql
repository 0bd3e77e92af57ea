-- 100 events in one call of utcp.append_events(), as the store sends a
-- 100-event append (pgbench -M prepared). See bench/README.md.
SELECT * FROM utcp.append_events(
    ('pgbench-append100-' || :client_id)::text, NULL::bigint, NULL::text, gen_random_uuid(),
    (SELECT jsonb_agg(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb))
       FROM generate_series(1, 100)));
