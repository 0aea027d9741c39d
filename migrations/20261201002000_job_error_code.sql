-- Why a job failed, as a code (app/core/job_errors.py) beside the free text of error_message:
-- a client branches on the code, and the text may change. Written by this service's worker
-- with error_message; jobs the mobile app runs itself leave it NULL (its Prisma client does
-- not know the column, and a new nullable column changes nothing it reads or writes).
-- NOT VALID: every existing row holds NULL, so there is nothing to scan under the lock.

-- The table is the busiest one: rather than queue every reader and writer behind a lock it
-- waits for (a long transaction elsewhere), this fails after 5 s; `atelier migrate` again.
SET LOCAL lock_timeout = '5s';

ALTER TABLE image_generation_jobs
    ADD COLUMN IF NOT EXISTS error_code TEXT;

ALTER TABLE image_generation_jobs
    ADD CONSTRAINT image_generation_jobs_error_code_check CHECK (error_code IN (
        'content_refused', 'invalid_request', 'unusable_image', 'provider_unavailable',
        'timed_out', 'reference_missing', 'storage_unavailable', 'worker_lost',
        'internal_error'
    )) NOT VALID;

-- No code without words: a row may not hold a code without error_message, and whatever
-- clears error_message (a claim, a hand-back) clears the code too, also when the writer is a
-- worker from before this column (a rolling deploy), which would otherwise leave a completed
-- job with the code of an attempt that failed before it, or break on the check.
ALTER TABLE image_generation_jobs
    ADD CONSTRAINT image_generation_jobs_error_code_has_message
        CHECK (error_code IS NULL OR error_message IS NOT NULL) NOT VALID;

CREATE OR REPLACE FUNCTION atelier_job_error_code_follows_message() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.error_code := NULL;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER image_generation_jobs_error_code_follows_message
    BEFORE UPDATE OF error_message ON image_generation_jobs
    FOR EACH ROW WHEN (OLD.error_message IS NOT NULL AND NEW.error_message IS NULL
                       AND NEW.error_code IS NOT NULL)
    EXECUTE FUNCTION atelier_job_error_code_follows_message();

-- Like every column the service sets for a job the worker runs, a client leaves it NULL on the
-- jobs it writes (20261130000100_row_level_security.sql, whose two policies this restates
-- with error_code added).
DROP POLICY IF EXISTS image_generation_jobs_insert_app_shaped ON image_generation_jobs;
CREATE POLICY image_generation_jobs_insert_app_shaped ON image_generation_jobs
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND kind IS NULL AND prompt IS NULL AND params = '{}'::jsonb AND cost = 0
                AND attempts = 0 AND lease_until IS NULL AND worker_id IS NULL
                AND idempotency_key IS NULL AND request_hash IS NULL AND image_id IS NULL
                AND model IS NULL AND error_code IS NULL);
DROP POLICY IF EXISTS image_generation_jobs_update_app_shaped ON image_generation_jobs;
CREATE POLICY image_generation_jobs_update_app_shaped ON image_generation_jobs
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.jwt() ->> 'sub') AND kind IS NULL)
    WITH CHECK (user_id = (SELECT auth.jwt() ->> 'sub')
                AND kind IS NULL AND prompt IS NULL AND params = '{}'::jsonb AND cost = 0
                AND attempts = 0 AND lease_until IS NULL AND worker_id IS NULL
                AND idempotency_key IS NULL AND request_hash IS NULL AND image_id IS NULL
                AND model IS NULL AND error_code IS NULL);
