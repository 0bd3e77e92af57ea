-- append_one_key.sql's request as a group of one through utcp.append_group()
-- (pgbench -M prepared). See README.md here.
SELECT * FROM utcp.append_group(
    ARRAY['pgbench-group1-key-' || :client_id]::text[], ARRAY[NULL]::bigint[],
    ARRAY[gen_random_uuid()::text], ARRAY[gen_random_uuid()],
    jsonb_build_array(jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb))));
