-- One request of 100 events through utcp.append_group(), as
-- append_hundred.sql sends them to append_events (pgbench -M prepared).
-- See README.md here.
SELECT * FROM utcp.append_group(
    ARRAY['pgbench-group100-' || :client_id]::text[], ARRAY[NULL]::bigint[], ARRAY[NULL]::text[],
    ARRAY[gen_random_uuid()],
    jsonb_build_array((SELECT jsonb_agg(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb))
       FROM generate_series(1, 100))));
