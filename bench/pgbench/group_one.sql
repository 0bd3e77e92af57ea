-- One request of one event through utcp.append_group(): a group of one, as
-- the direct writer sends it (pgbench -M prepared). See README.md here.
SELECT * FROM utcp.append_group(
    ARRAY['pgbench-group1-' || :client_id]::text[], ARRAY[NULL]::bigint[], ARRAY[NULL]::text[],
    ARRAY[gen_random_uuid()],
    jsonb_build_array(jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb))));
