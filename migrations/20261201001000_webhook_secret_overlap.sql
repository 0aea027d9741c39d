-- Rotating an outgoing-webhook endpoint's secret keeps the secret it replaces until
-- `previous_secret_expires_at` (a day): each attempt meanwhile carries a signature made with
-- each (Standard Webhooks lets `webhook-signature` hold several), so a receiver that has not
-- switched to the new secret yet still verifies. Only the service reads this table (RLS on,
-- no policy for a client role).

ALTER TABLE webhook_endpoints
    ADD COLUMN IF NOT EXISTS previous_secret TEXT,
    ADD COLUMN IF NOT EXISTS previous_secret_expires_at TIMESTAMPTZ;
