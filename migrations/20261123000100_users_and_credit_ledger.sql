-- Users: last login, a non-negative balance, updated_at kept by the database.
-- The credit ledger: one row per balance change, so that every balance is explained.

ALTER TABLE users ADD COLUMN IF NOT EXISTS last_login_at TIMESTAMPTZ;

-- NOT VALID first: new writes are checked at once. Existing rows are then validated; a live
-- database that already holds a negative balance keeps working (with a warning) instead of
-- failing the deploy, and the constraint is validated once that row is mended.
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_credits_nonnegative;
ALTER TABLE users ADD CONSTRAINT users_credits_nonnegative CHECK (credits >= 0) NOT VALID;
DO $$
BEGIN
    ALTER TABLE users VALIDATE CONSTRAINT users_credits_nonnegative;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'users holds negative credits; users_credits_nonnegative is left NOT VALID';
END
$$;

CREATE OR REPLACE FUNCTION atelier_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER users_set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_set_updated_at();

CREATE TABLE IF NOT EXISTS credit_ledger (
    id            BIGINT GENERATED ALWAYS AS IDENTITY,
    user_id       TEXT NOT NULL,
    delta         INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    job_id        UUID,
    source_id     TEXT,
    balance_after INTEGER NOT NULL,
    note          TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_ledger_pkey PRIMARY KEY (id),
    CONSTRAINT credit_ledger_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT credit_ledger_reason_check CHECK (reason IN (
        'signup', 'opening_balance', 'generate', 'style', 'edit', 'refund',
        'purchase', 'subscription_grant', 'admin')),
    CONSTRAINT credit_ledger_delta_check CHECK (
        delta <> 0 OR reason IN ('signup', 'opening_balance')),
    CONSTRAINT credit_ledger_balance_after_check CHECK (balance_after >= 0),
    CONSTRAINT credit_ledger_spend_has_job_check CHECK (
        reason NOT IN ('generate', 'style', 'edit', 'refund') OR job_id IS NOT NULL)
);

-- The invariants the service relies on, kept by the database rather than by code paths.
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_user_opening_key
    ON credit_ledger (user_id) WHERE reason IN ('signup', 'opening_balance');
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_job_debit_key
    ON credit_ledger (job_id) WHERE delta < 0 AND job_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_job_refund_key
    ON credit_ledger (job_id) WHERE reason = 'refund';
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_source_key
    ON credit_ledger (source_id) WHERE source_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS credit_ledger_user_id_id_idx ON credit_ledger (user_id, id DESC);

-- Users who existed before the service: one opening balance each, taken while this
-- migration holds the users table (ALTER TABLE above locked it), so no write slips between.
INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
SELECT u.id, u.credits, 'opening_balance', u.credits
FROM users u
WHERE u.credits >= 0
  AND NOT EXISTS (SELECT 1 FROM credit_ledger l WHERE l.user_id = u.id)
ON CONFLICT DO NOTHING;
