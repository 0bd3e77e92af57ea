-- Verify utcp:idempotency_keys on pg
SELECT key, fingerprint, stream_id, first_version, last_version, first_event_id, request_id,
       created_at
  FROM utcp.idempotency_keys WHERE false;
SELECT 1 / count(*) FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'utcp.idempotency_keys'::regclass AND tgname = 'idempotency_keys_no_update_delete';
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.idempotency_keys', 'INSERT'))::int;
