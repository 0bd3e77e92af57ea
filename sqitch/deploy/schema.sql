-- Deploy utcp:schema to pg
BEGIN;
CREATE SCHEMA utcp;
COMMENT ON SCHEMA utcp IS 'Audit store of the trading assistant: an append-only event log and its projections';
REVOKE ALL ON SCHEMA utcp FROM PUBLIC;
COMMIT;
