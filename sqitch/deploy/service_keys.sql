-- Deploy utcp:service_keys to pg
-- requires: roles
--
-- API keys of `eventstore serve` (storectl/service): stored as the SHA-256
-- of a 256-bit random secret (a fast hash is enough for a secret that
-- cannot be guessed; the secret itself is printed once, never stored).
-- Managed by operators (`eventstore keys add|list|revoke`); read by the
-- service, which connects as a member of utcp_writer. A key is never
-- deleted: revoking sets revoked_at, and its name stays taken.
BEGIN;

CREATE TABLE utcp.api_keys (
    name       text NOT NULL,
    role       text NOT NULL,
    key_hash   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (name),
    CONSTRAINT api_keys_hash_unique UNIQUE (key_hash),
    CONSTRAINT api_keys_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT api_keys_role_check CHECK (role IN ('reader', 'writer', 'admin')),
    CONSTRAINT api_keys_hash_check CHECK (pg_catalog.octet_length(key_hash) = 32)
);

REVOKE ALL ON utcp.api_keys FROM PUBLIC;
GRANT SELECT ON utcp.api_keys TO utcp_writer, utcp_operator;
GRANT INSERT ON utcp.api_keys TO utcp_operator;
GRANT UPDATE (revoked_at) ON utcp.api_keys TO utcp_operator;

COMMIT;
