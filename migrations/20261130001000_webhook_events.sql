-- Incoming webhooks (Stripe, Clerk): each event stored once by its provider's id, then
-- processed once. `processed_at` says it was applied; `error` keeps the last failure, which
-- `atelier webhooks replay` retries. Only the service reads this table: RLS is on and no
-- policy names a client role, so the mobile app (Supabase's `authenticated`) sees nothing.

CREATE TABLE IF NOT EXISTS webhook_events (
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT webhook_events_pkey PRIMARY KEY (provider, event_id),
    CONSTRAINT webhook_events_provider_check CHECK (provider IN ('stripe', 'clerk')),
    CONSTRAINT webhook_events_attempts_check CHECK (attempts >= 0)
);

-- What replay looks for: events that did not complete, oldest first.
CREATE INDEX IF NOT EXISTS webhook_events_pending_idx
    ON webhook_events (received_at) WHERE processed_at IS NULL;

ALTER TABLE webhook_events ENABLE ROW LEVEL SECURITY;
