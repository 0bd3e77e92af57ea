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

-- A revocation is for good: revoked_at is set once, from NULL to the time
-- of the revocation, and never changed or cleared afterwards.
CREATE FUNCTION utcp.api_keys_revoke_once() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL
       OR NEW.name IS DISTINCT FROM OLD.name OR NEW.role IS DISTINCT FROM OLD.role
       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'an API key can only be revoked, once (key %)', OLD.name
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION utcp.api_keys_revoke_once() FROM PUBLIC;
CREATE TRIGGER api_keys_revoke_once BEFORE UPDATE ON utcp.api_keys
    FOR EACH ROW EXECUTE FUNCTION utcp.api_keys_revoke_once();
ALTER TABLE utcp.api_keys ENABLE ALWAYS TRIGGER api_keys_revoke_once;

REVOKE ALL ON utcp.api_keys FROM PUBLIC;
GRANT SELECT ON utcp.api_keys TO utcp_writer, utcp_operator;
GRANT INSERT ON utcp.api_keys TO utcp_operator;
GRANT UPDATE (revoked_at) ON utcp.api_keys TO utcp_operator;

COMMIT;
