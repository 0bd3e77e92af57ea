-- Deploy utcp:stored_events to pg
-- requires: schema, roles
BEGIN;

CREATE TABLE utcp.stored_events (
    position        bigint GENERATED ALWAYS AS IDENTITY,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    -- 'portfolio' for 'portfolio-42': what category readers and queries filter on
    category        text        GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    type            text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb,
    symbol          text,       -- from the payload, when it has one
    occurred_at     timestamptz NOT NULL, -- business time from the payload, else created_at
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    prev_hash       bytea,      -- hash of the stream's previous event; NULL for version 1
    hash            bytea       NOT NULL,
    -- every unique key contains stream_id but event_id's, see docs/architecture.md (Citus)
    CONSTRAINT stored_events_pkey PRIMARY KEY (stream_id, stream_version),
    CONSTRAINT stored_events_event_id_key UNIQUE (event_id),
    CONSTRAINT stored_events_version_positive CHECK (stream_version >= 1),
    CONSTRAINT stored_events_data_object CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT stored_events_chain_start CHECK ((stream_version = 1) = (prev_hash IS NULL))
);
COMMENT ON TABLE utcp.stored_events IS
    'The audit log. Append-only: rows are only ever inserted, through utcp.append_events().';

-- Second line of defence behind privileges: even the table owner cannot
-- update, delete or truncate (short of disabling the trigger, which the
-- hash chain then exposes).
CREATE FUNCTION utcp.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on utcp.% is refused: the audit log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'UT003',
              HINT = 'Record a correcting event instead of changing a stored one.';
END $$;

CREATE TRIGGER stored_events_no_update_delete
    BEFORE UPDATE OR DELETE ON utcp.stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();
CREATE TRIGGER stored_events_no_truncate
    BEFORE TRUNCATE ON utcp.stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();

REVOKE ALL ON utcp.stored_events FROM PUBLIC;
GRANT SELECT ON utcp.stored_events TO utcp_reader, utcp_writer, utcp_projector;

COMMIT;
