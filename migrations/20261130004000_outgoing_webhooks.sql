-- Outgoing webhooks (issue 10, point 6): endpoints an integrator registers, one delivery per
-- (endpoint, event), and every attempt to send it. Only the service reads these tables: RLS
-- is on and no policy names a client role.

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id          UUID NOT NULL,
    user_id     TEXT NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT[] NOT NULL,
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at TIMESTAMPTZ,
    CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_endpoints_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT webhook_endpoints_events_check
        CHECK (cardinality(events) >= 1 AND events <@ ARRAY['job.completed', 'job.failed']),
    CONSTRAINT webhook_endpoints_url_check CHECK (char_length(url) BETWEEN 1 AND 2000)
);

CREATE INDEX IF NOT EXISTS webhook_endpoints_user_idx ON webhook_endpoints (user_id, created_at);

-- `id` is the Standard Webhooks message id (`webhook-id`), the same on every attempt.
-- `payload` is built at the first attempt (the job as GET /v1/jobs/{id} shows it) and sent
-- unchanged on every retry. `next_attempt_at` is also the lease: a sender that claims a
-- delivery moves it forward, so one that dies mid-send is retried when it lapses.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              UUID NOT NULL DEFAULT gen_random_uuid(),
    endpoint_id     UUID NOT NULL,
    event_id        TEXT NOT NULL,
    type            TEXT NOT NULL,
    job_id          UUID NOT NULL,
    payload         JSONB,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_deliveries_endpoint_id_fkey
        FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_event_key UNIQUE (endpoint_id, event_id),
    CONSTRAINT webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed')),
    CONSTRAINT webhook_deliveries_attempts_check CHECK (attempts >= 0)
);

-- What the sender claims: pending deliveries that are due.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint_idx
    ON webhook_deliveries (endpoint_id, created_at);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY,
    delivery_id  UUID NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code  INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL,
    CONSTRAINT webhook_attempts_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_attempts_delivery_id_fkey
        FOREIGN KEY (delivery_id) REFERENCES webhook_deliveries (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS webhook_attempts_delivery_idx
    ON webhook_attempts (delivery_id, attempted_at);

-- A service job that ends (the worker, a cancellation or the reaper) enqueues one delivery
-- per subscribed endpoint in the transaction that ends it, so no event is lost or sent for
-- a change that rolled back. SECURITY DEFINER: a client role moving a job along must not
-- need (or get) rights on these tables.
CREATE OR REPLACE FUNCTION atelier_enqueue_job_webhooks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    event_type text := 'job.' || NEW.status;
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, type, job_id)
    SELECT e.id, event_type || ':' || NEW.id::text, event_type, NEW.id
    FROM webhook_endpoints e
    WHERE e.user_id = NEW.user_id AND e.disabled_at IS NULL AND event_type = ANY (e.events)
    ON CONFLICT ON CONSTRAINT webhook_deliveries_event_key DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER image_generation_jobs_enqueue_webhooks
    AFTER UPDATE OF status ON image_generation_jobs
    FOR EACH ROW
    WHEN (NEW.kind IS NOT NULL AND NEW.status IN ('completed', 'failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION atelier_enqueue_job_webhooks();

CREATE OR REPLACE TRIGGER webhook_endpoints_refuse_erased_owner
    BEFORE INSERT OR UPDATE OF user_id ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION atelier_refuse_erased_owner();

-- An erasure takes the user's endpoints (and so their deliveries) with it.
CREATE OR REPLACE FUNCTION atelier_erase_webhook_endpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_endpoints WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER users_erase_webhook_endpoints
    AFTER UPDATE OF erased_at ON users
    FOR EACH ROW WHEN (OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL)
    EXECUTE FUNCTION atelier_erase_webhook_endpoints();

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON webhook_endpoints, webhook_deliveries, webhook_attempts FROM anon, authenticated;
