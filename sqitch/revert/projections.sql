-- Revert utcp:projections from pg
-- Read models only: the log keeps everything they were derived from.
BEGIN;
REVOKE CREATE ON SCHEMA utcp FROM utcp_projector;
DROP TABLE utcp.projection_checkpoints;
DROP TABLE utcp.portfolios;
DROP TABLE utcp.positions;
DROP TABLE utcp.trades;
COMMIT;
