-- API keys for servers (issue 10, point 5). A key is `atl_` + a random secret, shown once;
-- only its SHA-256 is kept (a fast hash is right for a high-entropy secret: nothing to
-- brute-force, and verifying costs one indexed lookup). `prefix` is for display only.
-- Revoking deletes the row. Only the service reads this table: RLS is on and no policy
-- names a client role.

CREATE TABLE IF NOT EXISTS api_keys (
    id           UUID NOT NULL,
    user_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_key_hash_check CHECK (octet_length(key_hash) = 32),
    CONSTRAINT api_keys_name_check CHECK (char_length(name) BETWEEN 1 AND 100)
);

CREATE INDEX IF NOT EXISTS api_keys_user_idx ON api_keys (user_id, created_at);

-- No key is made for an erased user (a request in flight when the erasure committed).
CREATE OR REPLACE TRIGGER api_keys_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON api_keys
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();

-- An erasure takes the user's keys with it (the lookup refuses an erased owner regardless).
CREATE OR REPLACE FUNCTION atelier_erase_api_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM api_keys WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER users_erase_api_keys
    AFTER UPDATE OF erased_at ON users
    FOR EACH ROW WHEN (OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL)
    EXECUTE FUNCTION atelier_erase_api_keys();

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON api_keys FROM anon, authenticated;
