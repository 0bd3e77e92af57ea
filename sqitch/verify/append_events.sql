-- Verify utcp:append_events on pg
SELECT 1 / (has_function_privilege('utcp_writer', 'utcp.append_events(text, bigint, text, bytea, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (NOT has_function_privilege('utcp_reader', 'utcp.append_events(text, bigint, text, bytea, jsonb)', 'EXECUTE'))::int;
SELECT 1 / (octet_length(utcp.hash_chain_step(NULL, NULL, '\x00'::bytea)) = 32)::int;
