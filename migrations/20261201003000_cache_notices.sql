-- Each API process remembers, for a few seconds, who a user is (app.services.users: id,
-- email) and whom an API key belongs to (app.services.api_keys). When that changes, whoever
-- changes it (this service, the mobile app, an administrator in psql), every process hears
-- of it on `atelier_forget` once the change commits, and forgets that entry: a revoked key
-- or an erased account stops working on every instance at once, not when the entry lapses.
-- Only what the caches hold sends a notice: a balance or a login time changes nothing here.
-- pg_notify is open to every role, so these triggers ask nothing of the mobile app's roles.

CREATE OR REPLACE FUNCTION atelier_forget_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('atelier_forget', json_build_object('user', OLD.id)::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER users_forget_on_change
    AFTER UPDATE OF email, erased_at ON users
    FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email
                       OR OLD.erased_at IS DISTINCT FROM NEW.erased_at)
    EXECUTE FUNCTION atelier_forget_user();

CREATE OR REPLACE TRIGGER users_forget_on_delete
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_forget_user();

CREATE OR REPLACE FUNCTION atelier_forget_api_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('atelier_forget',
                      json_build_object('api_key', encode(OLD.key_hash, 'hex'))::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER api_keys_forget_on_delete
    AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION atelier_forget_api_key();
