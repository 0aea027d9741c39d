-- Account erasure (Clerk's user.deleted, DELETE /v1/me): the user's data goes, the users row
-- stays as a tombstone (email replaced, balance forfeited through the ledger, erased_at
-- set), so that the ledger keeps its accounting rows and foreign key, and the id can never
-- become a fresh account with new free credits: a first request racing the erasure meets
-- the row's primary key, not an empty slot.

ALTER TABLE users ADD COLUMN IF NOT EXISTS erased_at TIMESTAMPTZ;

-- A tombstone is final: no statement (the service's, the mobile app's, an admin's) may
-- change it again, undo its erasure included. Only deleting it outright remains possible.
CREATE OR REPLACE FUNCTION atelier_users_erased_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.erased_at IS NOT NULL THEN
        RAISE EXCEPTION 'user % was erased; its row no longer changes', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'users_erased_is_final';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER users_erased_is_final
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_users_erased_is_final();

-- Nothing new may belong to an erased user: a write that was already under way when the
-- erasure began (a like, a prompt, a generation, a pack, a row the mobile app inserts)
-- either committed first, and the erasure (which locks the users row before deleting)
-- removes it, or waits here for the erasure's lock and is then refused: the locking read
-- sees the committed tombstone. The foreign keys alone would accept the tombstone.
-- SECURITY DEFINER: the lock is taken as the owner, whatever a client role may lock itself.
CREATE OR REPLACE FUNCTION atelier_refuse_erased_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    erased timestamptz;
BEGIN
    -- By id only, then look: a locking read waits for the erasure's FOR UPDATE and returns
    -- the row as the erasure left it (a condition on erased_at would be judged on the
    -- version before, and not wait at all).
    SELECT u.erased_at INTO erased FROM users u WHERE u.id = NEW.user_id FOR KEY SHARE;
    IF erased IS NOT NULL THEN
        RAISE EXCEPTION 'user % was erased', NEW.user_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'users_erased_owner';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER generated_images_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON generated_images
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
CREATE OR REPLACE TRIGGER image_generation_jobs_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON image_generation_jobs
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
CREATE OR REPLACE TRIGGER custom_prompts_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON custom_prompts
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
CREATE OR REPLACE TRIGGER subscriptions_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
CREATE OR REPLACE TRIGGER image_likes_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON image_likes
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
CREATE OR REPLACE TRIGGER icon_packs_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON icon_packs
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();
