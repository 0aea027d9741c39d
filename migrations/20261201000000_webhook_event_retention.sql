-- A processed incoming event keeps its payload for WEBHOOK_EVENT_PAYLOAD_DAYS; then the
-- worker keeps only {"expired": true} (app.db.webhook_events.expire_payloads), and the row,
-- whose id turns a redelivery away. This index finds, oldest first, the processed events
-- that still hold a payload, so the hourly sweep reads none of the rest.

CREATE INDEX IF NOT EXISTS webhook_events_payload_kept_idx
    ON webhook_events (processed_at)
    WHERE payload <> '{"expired": true}'::jsonb AND payload <> '{"erased": true}'::jsonb;
