-- Revert utcp:chain_anchors from pg
BEGIN;
DROP FUNCTION utcp.anchor_log();
DROP FUNCTION utcp.log_digest(xid8, bigint, xid8, bigint);
DROP TABLE utcp.chain_anchors;
COMMIT;
