-- An erasure scrubs the stored incoming events that name the erased user (their emails,
-- names and addresses): Clerk's by the user id they carry, Stripe's by the user's customer
-- (app.db.webhook_events.scrub_about_user). These indexes find them without reading the whole table,
-- which only grows.

CREATE INDEX IF NOT EXISTS webhook_events_clerk_user_idx
    ON webhook_events ((payload #>> '{data,id}')) WHERE provider = 'clerk';

CREATE INDEX IF NOT EXISTS webhook_events_stripe_customer_idx
    ON webhook_events ((payload #>> '{data,object,customer}')) WHERE provider = 'stripe';

-- `customer.*` events: their object is the customer itself.
CREATE INDEX IF NOT EXISTS webhook_events_stripe_object_idx
    ON webhook_events ((payload #>> '{data,object,id}')) WHERE provider = 'stripe';
