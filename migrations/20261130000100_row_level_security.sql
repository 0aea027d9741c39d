-- Row Level Security for the clients that talk to Supabase directly (supabase-js through
-- PostgREST, which runs each request as role `authenticated` or `anon` with the Clerk
-- token's claims in `request.jwt.claims`). Each user sees and changes only their own rows
-- (auth.jwt()->>'sub'), public images are readable, and no client can raise its own
-- credits, queue a job the worker would run, or write what only the service writes.
--
-- The service connects as the tables' owner (superuser `postgres` in tests, `postgres`
-- as owner on Supabase): owners bypass RLS unless it is FORCEd, and it is not, so the
-- API, the worker and the mobile app's Prisma client (also the owner) work as before.
--
-- Grants: the client roles get exactly what the policies below need. Supabase grants ALL
-- on new public tables to anon and authenticated by default; the policies and triggers are
-- written to hold even then (the tests run them both ways), the grants are a second fence.
-- Any table added later must ENABLE ROW LEVEL SECURITY (a test checks every public table).

-- The ledger learns the reason for a decrease the app made itself.
ALTER TABLE credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_reason_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_reason_check CHECK (reason IN (
    'signup', 'opening_balance', 'generate', 'style', 'edit', 'refund',
    'purchase', 'subscription_grant', 'admin', 'app_spend'));

-- The most credits a client may give the users row it creates for itself (the app creates
-- its user with 5, the service's NEW_USER_CREDITS default). A constant here rather than a
-- setting: a custom GUC could be changed by anyone in their own session, and the service's
-- own NEW_USER_CREDITS (it inserts as the owner, unaffected by policies) may differ. A
-- change is a new migration replacing this function.
CREATE OR REPLACE FUNCTION atelier_client_new_user_credits() RETURNS integer
LANGUAGE sql IMMUTABLE
AS 'SELECT 5';

-- --- users ------------------------------------------------------------------------------

-- A client may lower its own credits (the app deducts client-side today) but never raise
-- them; below zero is refused by users_credits_nonnegative. Policies cannot compare the
-- old and new row, so a trigger does, for the client roles only.
CREATE OR REPLACE FUNCTION atelier_users_client_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_user IN ('anon', 'authenticated') AND NEW.credits > OLD.credits THEN
        RAISE EXCEPTION
            'users_credits_client_no_raise: a client may lower its own credits, never raise them (% to %)',
            OLD.credits, NEW.credits
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER users_client_guard
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_users_client_guard();

-- Every decrease of a balance that the ledger does not already explain is recorded as
-- `app_spend`, so `atelier check-ledger` explains the app's own deductions.
--
-- Why it reconciles at commit instead of firing for the client roles only: the service's
-- own balance changes (the debit CTE in app/db/jobs.py, spend/refund/grant in
-- app/db/ledger.py) write their ledger row themselves, and the mobile app's Prisma client
-- deducts as the owner role, where a role test cannot tell it from the service. So this is
-- a deferred constraint trigger: at commit it compares the balance with the newest ledger
-- row's balance_after and records only the difference the ledger lacks. The service's
-- changes find nothing missing (no second row); the app's deductions, through PostgREST or
-- Prisma, are recorded. While it runs the transaction still holds the users row it
-- updated, and every path that writes the ledger locks that row first, so the two reads
-- agree. A user the service has not opened yet (no ledger row) is opened at the balance
-- before the decrease, then the decrease follows. An unexplained increase (only the owner
-- can make one) is left for check-ledger to report, as before.
-- SECURITY DEFINER: the client roles cannot write the ledger themselves.
CREATE OR REPLACE FUNCTION atelier_ledger_app_spend() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    balance integer;
    last_balance integer;
BEGIN
    SELECT credits INTO balance FROM users WHERE id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;  -- deleted later in the same transaction
    END IF;
    SELECT balance_after INTO last_balance FROM credit_ledger
    WHERE user_id = NEW.id ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN
        IF OLD.credits < 0 THEN
            RETURN NULL;  -- a legacy negative balance cannot be opened
        END IF;
        INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
        VALUES (NEW.id, OLD.credits, 'opening_balance', OLD.credits);
        last_balance := OLD.credits;
    END IF;
    IF balance < last_balance THEN
        INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
        VALUES (NEW.id, balance - last_balance, 'app_spend', balance);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS users_ledger_app_spend ON users;
CREATE CONSTRAINT TRIGGER users_ledger_app_spend
    AFTER UPDATE OF credits ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.credits < OLD.credits)
    EXECUTE FUNCTION atelier_ledger_app_spend();

ALTER TABLE users ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS users_select_own ON users;
CREATE POLICY users_select_own ON users FOR SELECT TO authenticated
    USING (id = (SELECT auth.jwt() ->> 'sub'));
DROP POLICY IF EXISTS users_insert_own ON users;
CREATE POLICY users_insert_own ON users FOR INSERT TO authenticated
    WITH CHECK (id = (SELECT auth.jwt() ->> 'sub')
                AND credits <= atelier_client_new_user_credits());
DROP POLICY IF EXISTS users_update_own ON users;
CREATE POLICY users_update_own ON users FOR UPDATE TO authenticated
    USING (id = (SELECT auth.jwt() ->> 'sub'))
    WITH CHECK (id = (SELECT auth.jwt() ->> 'sub'));

-- --- generated_images ---------------------------------------------------------------------

-- What the service keeps for an image (its like count, where its bytes are, the job that
-- made it, the pack it belongs to) is not the client's to change. A trigger rather than
-- column-level UPDATE grants: a table-level UPDATE (Supabase's default ALL) covers every
-- column whatever the column grants say, so only a trigger holds under both.
CREATE OR REPLACE FUNCTION atelier_generated_images_client_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_user IN ('anon', 'authenticated') AND (
        NEW.likes_count IS DISTINCT FROM OLD.likes_count
        OR NEW.storage_key IS DISTINCT FROM OLD.storage_key
        OR NEW.job_id IS DISTINCT FROM OLD.job_id
        OR NEW.pack_id IS DISTINCT FROM OLD.pack_id) THEN
        RAISE EXCEPTION
            'generated_images_client_columns: a client may not change likes_count, storage_key, job_id or pack_id'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER generated_images_client_guard
    BEFORE UPDATE ON generated_images
    FOR EACH ROW EXECUTE FUNCTION atelier_generated_images_client_guard();

ALTER TABLE generated_images ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS generated_images_select_own_or_public ON generated_images;
CREATE POLICY generated_images_select_own_or_public ON generated_images
    FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub')
           OR (visibility = 'public' AND deleted_at IS NULL));
DROP POLICY IF EXISTS generated_images_select_public ON generated_images;
CREATE POLICY generated_images_select_public ON generated_images FOR SELECT TO anon
    USING (visibility = 'public' AND deleted_at IS NULL);
DROP POLICY IF EXISTS generated_images_insert_own ON generated_images;
CREATE POLICY generated_images_insert_own ON generated_images FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND likes_count = 0 AND storage_key IS NULL AND job_id IS NULL
                AND pack_id IS NULL);
DROP POLICY IF EXISTS generated_images_update_own ON generated_images;
CREATE POLICY generated_images_update_own ON generated_images FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'))
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub'));
DROP POLICY IF EXISTS generated_images_delete_own ON generated_images;
CREATE POLICY generated_images_delete_own ON generated_images FOR DELETE TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'));

-- --- custom_prompts -----------------------------------------------------------------------

ALTER TABLE custom_prompts ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS custom_prompts_own ON custom_prompts;
CREATE POLICY custom_prompts_own ON custom_prompts FOR ALL TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'))
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub'));

-- --- image_generation_jobs ----------------------------------------------------------------

-- A client's job is the app's shape: everything the service sets for a job the worker runs
-- (kind, cost, attempts, lease, idempotency, …) left NULL or at its default. The worker
-- claims only kind IS NOT NULL, so a client never queues work nobody paid for; it may move
-- its own app-shaped jobs along (status, progress, output), and never touches the service's.
ALTER TABLE image_generation_jobs ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS image_generation_jobs_select_own ON image_generation_jobs;
CREATE POLICY image_generation_jobs_select_own ON image_generation_jobs
    FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'));
DROP POLICY IF EXISTS image_generation_jobs_insert_app_shaped ON image_generation_jobs;
CREATE POLICY image_generation_jobs_insert_app_shaped ON image_generation_jobs
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND kind IS NULL AND prompt IS NULL AND params = '{}'::jsonb AND cost = 0
                AND attempts = 0 AND lease_until IS NULL AND worker_id IS NULL
                AND idempotency_key IS NULL AND request_hash IS NULL AND image_id IS NULL
                AND model IS NULL);
DROP POLICY IF EXISTS image_generation_jobs_update_app_shaped ON image_generation_jobs;
CREATE POLICY image_generation_jobs_update_app_shaped ON image_generation_jobs
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub') AND kind IS NULL)
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND kind IS NULL AND prompt IS NULL AND params = '{}'::jsonb AND cost = 0
                AND attempts = 0 AND lease_until IS NULL AND worker_id IS NULL
                AND idempotency_key IS NULL AND request_hash IS NULL AND image_id IS NULL
                AND model IS NULL);

-- --- subscriptions ------------------------------------------------------------------------

-- The app creates its own Free row; a paid status and the Stripe ids come only from the
-- service's webhook handling, and no client updates the row.
ALTER TABLE subscriptions ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS subscriptions_select_own ON subscriptions;
CREATE POLICY subscriptions_select_own ON subscriptions FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'));
DROP POLICY IF EXISTS subscriptions_insert_free ON subscriptions;
CREATE POLICY subscriptions_insert_free ON subscriptions FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND status = 'Free' AND stripe_customer_id IS NULL
                AND stripe_subscription_id IS NULL AND price_id IS NULL
                AND current_period_end IS NULL);

-- --- what only the service writes ---------------------------------------------------------

ALTER TABLE credit_ledger ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS credit_ledger_select_own ON credit_ledger;
CREATE POLICY credit_ledger_select_own ON credit_ledger FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'));

ALTER TABLE icon_packs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS icon_packs_select_own ON icon_packs;
CREATE POLICY icon_packs_select_own ON icon_packs FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub'));

ALTER TABLE image_likes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS image_likes_select_all ON image_likes;
CREATE POLICY image_likes_select_all ON image_likes FOR SELECT TO authenticated
    USING (true);

-- --- grants, and every other table --------------------------------------------------------

-- Every table in public has RLS on: the ones above with their policies, the rest
-- (atelier_migrations, and whatever else the service holds) with none, so no client row.
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    END LOOP;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM anon, authenticated;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM anon, authenticated;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT SELECT ON generated_images TO anon;
GRANT SELECT, INSERT, UPDATE ON users TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON generated_images, custom_prompts TO authenticated;
GRANT SELECT, INSERT, UPDATE ON image_generation_jobs TO authenticated;
-- UPDATE: the app's upsert (INSERT … ON CONFLICT DO UPDATE) needs the privilege even when it
-- inserts; with no UPDATE policy, its update path is refused.
GRANT SELECT, INSERT, UPDATE ON subscriptions TO authenticated;
GRANT SELECT ON credit_ledger, icon_packs, image_likes TO authenticated;
-- service_role bypasses RLS; on Supabase it holds ALL already.
GRANT ALL ON ALL TABLES IN SCHEMA public TO service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO service_role;
