-- Revert utcp:projection_guarded from pg
-- Back to the projections change: the projector group owns the read
-- models and may create in schema utcp; the advisory locks (in the code of
-- that version) exclude workers.
BEGIN;

DROP FUNCTION utcp.projection_table_lockers(text);
DROP FUNCTION utcp.rebuild_swap(text, text, text);
DROP FUNCTION utcp.rebuild_discard(text);
DROP FUNCTION utcp.rebuild_prepare(text);
DROP FUNCTION utcp.rebuild_shadow_names(text);
DROP FUNCTION utcp.projection_lease_holders(text);
DROP FUNCTION utcp.projection_session_alive(integer, bigint, timestamptz);
DROP TABLE utcp.projection_leases;

-- The projector's grants go first, so that owning the tables again gives
-- it exactly what it had (an owner's full rights, nothing granted twice).
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['trades', 'positions', 'portfolios', 'projection_checkpoints'] LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON utcp.%I FROM utcp_projector', t);
    EXECUTE pg_catalog.format('ALTER TABLE utcp.%I OWNER TO utcp_projector', t);
  END LOOP;
END $$;
GRANT CREATE ON SCHEMA utcp TO utcp_projector;

COMMIT;
