-- Eight one-event requests on eight streams in one utcp.append_group() call:
-- what group commit sends for eight concurrent writers (pgbench -M prepared).
-- See README.md here.
SELECT * FROM utcp.append_group(
    (SELECT array_agg('pgbench-group8-' || :client_id || '-' || g) FROM generate_series(1, 8) AS g),
    array_fill(NULL::bigint, ARRAY[8]), array_fill(NULL::text, ARRAY[8]),
    (SELECT array_agg(gen_random_uuid()) FROM generate_series(1, 8)),
    (SELECT jsonb_agg(jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)))
       FROM generate_series(1, 8)));
