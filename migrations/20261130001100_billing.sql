-- Billing: what Stripe says about a subscription, beside the columns the mobile app reads,
-- and a ledger reason for credits taken back when a pack's payment is refunded or lost to a
-- dispute. The shared `subscriptions` table only gains nullable or defaulted columns.

ALTER TABLE subscriptions
    ADD COLUMN IF NOT EXISTS stripe_status TEXT,
    ADD COLUMN IF NOT EXISTS cancel_at_period_end BOOLEAN NOT NULL DEFAULT false,
    -- `created` of the newest Stripe event applied to this row: an older event arriving
    -- later does not roll the row back.
    ADD COLUMN IF NOT EXISTS stripe_event_at TIMESTAMPTZ;

-- Webhooks find the user by Stripe customer. Not unique: the app's own rows are not ours
-- to judge, and a deploy must not fail on them.
CREATE INDEX IF NOT EXISTS subscriptions_stripe_customer_id_idx
    ON subscriptions (stripe_customer_id) WHERE stripe_customer_id IS NOT NULL;

-- A reversal takes back what is left, down to zero: it may take nothing and still be
-- recorded, so that it happens once per charge.
ALTER TABLE credit_ledger
    DROP CONSTRAINT IF EXISTS credit_ledger_reason_check,
    DROP CONSTRAINT IF EXISTS credit_ledger_delta_check;
ALTER TABLE credit_ledger
    ADD CONSTRAINT credit_ledger_reason_check CHECK (reason IN (
        'signup', 'opening_balance', 'generate', 'style', 'edit', 'refund',
        'purchase', 'subscription_grant', 'admin', 'app_spend', 'purchase_reversal')),
    ADD CONSTRAINT credit_ledger_delta_check CHECK (
        delta <> 0 OR reason IN ('signup', 'opening_balance', 'purchase_reversal')),
    ADD CONSTRAINT credit_ledger_reversal_check CHECK (
        reason <> 'purchase_reversal' OR delta <= 0);
