-- Verify utcp:append_events on pg
SELECT 1 / (has_function_privilege('utcp_writer', 'utcp.append_events(text, bigint, text, bytea, uuid, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_reader', 'utcp.append_events(text, bigint, text, bytea, uuid, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (octet_length(sha256(utcp.event_content(
    gen_random_uuid(), 'a-1', 1, 'T', '{}', NULL, NULL, now(), now()))) = 32)::int;
