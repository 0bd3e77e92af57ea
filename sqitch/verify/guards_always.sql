-- Verify utcp:guards_always on pg
-- Every append-only trigger fires always ('A'), in replica sessions too.
SELECT 1 / (count(*) = 6)::int
  FROM pg_trigger
 WHERE tgname IN ('stored_events_no_update_delete', 'stored_events_no_truncate',
                  'idempotency_keys_no_update_delete', 'idempotency_keys_no_truncate',
                  'chain_anchors_no_update_delete', 'chain_anchors_no_truncate')
   AND tgenabled = 'A';
