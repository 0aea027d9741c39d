-- Which claim of a delivery is its sender's now: a claim sets a new one, and an attempt's
-- failure is recorded only by the sender whose claim it still is. A sender whose lease ran
-- out (its process stalled past WEBHOOK_TIMEOUT_SECONDS × 2 + 30 s) used to record over the
-- next claimer's lease: its failure made the delivery due again while the other was still
-- sending it (sent twice at once), or failed it for good under a send that then succeeded.
-- NULL: not claimed since this column came (a sender from before it records as it did).
-- A new nullable column on a table only this service uses: nothing to scan or rewrite.
ALTER TABLE webhook_deliveries
    ADD COLUMN IF NOT EXISTS lease_id UUID;
