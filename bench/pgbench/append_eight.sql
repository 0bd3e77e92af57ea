-- Eight one-event appends on eight streams through utcp.append_events(), each
-- its own transaction and WAL flush, as eight writers send them today: the
-- baseline for group_eight.sql (pgbench -M prepared). See README.md here.
\set s 'pgbench-append8-'
SELECT * FROM utcp.append_events((:'s' || :client_id || '-1')::text, NULL::bigint, NULL::text, gen_random_uuid(),
    jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
