-- Verify utcp:stored_events on pg
SELECT position, event_id, stream_id, stream_version, category, type, data, metadata,
       symbol, occurred_at, tx_id, created_at, prev_hash, hash
  FROM utcp.stored_events WHERE false;
SELECT 1 / count(*) FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'utcp.stored_events'::regclass AND tgname = 'stored_events_no_update_delete' AND tgenabled IN ('O', 'A');  -- enabled (always, after guards_always)
SELECT 1 / count(*) FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'utcp.stored_events'::regclass AND tgname = 'stored_events_no_truncate' AND tgenabled IN ('O', 'A');  -- enabled (always, after guards_always)
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.stored_events', 'UPDATE'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.stored_events', 'INSERT'))::int;
