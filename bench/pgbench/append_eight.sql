-- Eight one-event appends on eight streams through utcp.append_events(),
-- each its own transaction and WAL flush, as eight writers send them today:
-- the baseline for group_eight.sql (pgbench -M prepared; pgbench runs each
-- statement of a script in its own transaction). See README.md here.
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-1')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-2')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-3')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-4')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-5')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-6')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-7')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
SELECT * FROM utcp.append_events(('pgbench-append8-' || :client_id || '-8')::text, NULL::bigint, NULL::text,
    gen_random_uuid(), jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'BenchTradeRecorded',
        'data', '{"symbol": "AAPL", "side": "buy", "quantity": "10", "price": "101.5"}'::jsonb,
        'metadata', '{"actor": "pgbench"}'::jsonb)));
