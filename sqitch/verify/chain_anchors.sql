-- Verify utcp:chain_anchors on pg
SELECT anchor_id, through_tx, through_position, events, digest, created_at
  FROM utcp.chain_anchors WHERE false;
SELECT 1 / count(*) FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'utcp.chain_anchors'::regclass AND tgname = 'chain_anchors_no_update_delete';
SELECT 1 / (has_function_privilege('utcp_writer', 'utcp.anchor_log()', 'EXECUTE'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.chain_anchors', 'INSERT'))::int;
