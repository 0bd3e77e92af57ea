-- Deploy utcp:idempotency_keys to pg
-- requires: schema, roles, stored_events (utcp.refuse_change)
BEGIN;

-- One row per idempotency key ever used, kept for good: an audit store never
-- forgets that it already recorded something.
CREATE TABLE utcp.idempotency_keys (
    key             text        NOT NULL,
    fingerprint     bytea       NOT NULL,  -- sha256 of the request (stream and events)
    stream_id       text        NOT NULL,
    first_version   bigint      NOT NULL,
    last_version    bigint      NOT NULL,
    first_event_id  uuid        NOT NULL,
    request_id      uuid        NOT NULL,  -- the writing call's nonce (its retries share it)
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key),
    CONSTRAINT idempotency_keys_versions CHECK (first_version >= 1 AND last_version >= first_version)
);

CREATE TRIGGER idempotency_keys_no_update_delete
    BEFORE UPDATE OR DELETE ON utcp.idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();
CREATE TRIGGER idempotency_keys_no_truncate
    BEFORE TRUNCATE ON utcp.idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION utcp.refuse_change();

REVOKE ALL ON utcp.idempotency_keys FROM PUBLIC;
GRANT SELECT ON utcp.idempotency_keys TO utcp_reader, utcp_writer, utcp_projector;

COMMIT;
