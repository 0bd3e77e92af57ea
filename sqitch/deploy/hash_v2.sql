-- Deploy utcp:hash_v2 to pg
-- requires: append_events, operators
-- Hash scheme 2: an unambiguous canonical encoding of an event.
--
-- Scheme 1 (utcp.event_content) joins the fields with U+001F without
-- escaping, and NULL and '' encode alike: two different events can have
-- the same content (type, data, metadata and symbol shifted across the
-- separators). Scheme 2 encodes every field as its length (4 bytes, big
-- endian; -1 for NULL) followed by its UTF-8 bytes, behind a version tag,
-- so no two different events share an encoding. It also covers the role
-- that recorded the event. Each event records the scheme its hash uses;
-- events hashed under scheme 1 stay verifiable under scheme 1.
BEGIN;

ALTER TABLE utcp.stored_events ADD COLUMN hash_version smallint NOT NULL DEFAULT 1;
ALTER TABLE utcp.stored_events ADD CONSTRAINT stored_events_hash_version
    CHECK (hash_version IN (1, 2));
COMMENT ON COLUMN utcp.stored_events.hash_version IS
    'The hash scheme of this event: 1 utcp.event_content, 2 utcp.event_content_v2';

-- One field: its length, then its bytes (NULL: length -1, no bytes).
CREATE FUNCTION utcp.hash_field(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(value, 'UTF8')))
           OPERATOR(pg_catalog.||) pg_catalog.convert_to(value, 'UTF8')
$$;

-- The canonical bytes of one event under scheme 2. Timestamps as epoch
-- microseconds, jsonb in its normalised text: nothing depends on session
-- settings.
CREATE FUNCTION utcp.event_content_v2(
    event_id uuid, stream_id text, stream_version bigint, type text, data jsonb,
    metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.convert_to('utcp-event-v2', 'UTF8')
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(event_id::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(stream_id), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(stream_version::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(type), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(data::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(metadata::text), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(symbol), '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(
            (EXTRACT(epoch FROM occurred_at) OPERATOR(pg_catalog.*) 1000000)::bigint::text),
            '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(
            (EXTRACT(epoch FROM created_at) OPERATOR(pg_catalog.*) 1000000)::bigint::text),
            '\xffffffff'::bytea)
        OPERATOR(pg_catalog.||) COALESCE(utcp.hash_field(recorded_by), '\xffffffff'::bytea)
$$;

-- hash(n) = sha256(hash(n-1) || content_v2(n)), hash(0) empty.
CREATE FUNCTION utcp.event_hash_v2(
    prev_hash bytea, event_id uuid, stream_id text, stream_version bigint, type text,
    data jsonb, metadata jsonb, symbol text, occurred_at timestamptz, created_at timestamptz,
    recorded_by text)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(COALESCE(prev_hash, '\x'::bytea) OPERATOR(pg_catalog.||)
        utcp.event_content_v2(event_id, stream_id, stream_version, type, data, metadata, symbol,
                              occurred_at, created_at, recorded_by))
$$;

REVOKE ALL ON FUNCTION utcp.hash_field(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION utcp.event_content_v2(uuid, text, bigint, text, jsonb, jsonb, text,
                                             timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION utcp.event_hash_v2(bytea, uuid, text, bigint, text, jsonb, jsonb, text,
                                          timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION utcp.hash_field(text)
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;
GRANT EXECUTE ON FUNCTION utcp.event_content_v2(uuid, text, bigint, text, jsonb, jsonb, text,
                                                timestamptz, timestamptz, text)
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;
GRANT EXECUTE ON FUNCTION utcp.event_hash_v2(bytea, uuid, text, bigint, text, jsonb, jsonb, text,
                                             timestamptz, timestamptz, text)
    TO utcp_reader, utcp_writer, utcp_projector, utcp_operator;

COMMIT;
