-- Generation: what the service adds to the mobile app's jobs and images tables.
-- Every new column is nullable or defaulted, so the app's own inserts keep working; the
-- worker only ever claims jobs the service created (kind IS NOT NULL).

ALTER TABLE image_generation_jobs
    ADD COLUMN IF NOT EXISTS kind TEXT,
    ADD COLUMN IF NOT EXISTS prompt TEXT,
    ADD COLUMN IF NOT EXISTS params JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS cost INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS worker_id TEXT,
    ADD COLUMN IF NOT EXISTS idempotency_key TEXT,
    ADD COLUMN IF NOT EXISTS request_hash TEXT,
    ADD COLUMN IF NOT EXISTS image_id UUID,
    ADD COLUMN IF NOT EXISTS model TEXT;

ALTER TABLE image_generation_jobs
    ADD CONSTRAINT image_generation_jobs_kind_check
        CHECK (kind IS NULL OR kind IN ('generate', 'style', 'edit')),
    ADD CONSTRAINT image_generation_jobs_cost_check CHECK (cost >= 0),
    ADD CONSTRAINT image_generation_jobs_attempts_check CHECK (attempts >= 0),
    ADD CONSTRAINT image_generation_jobs_progress_check CHECK (progress BETWEEN 0 AND 100) NOT VALID;

CREATE UNIQUE INDEX IF NOT EXISTS image_generation_jobs_idempotency_key
    ON image_generation_jobs (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The worker's two questions: what is ready to run, and whose lease ran out.
CREATE INDEX IF NOT EXISTS image_generation_jobs_ready_idx
    ON image_generation_jobs (available_at) WHERE status = 'pending' AND kind IS NOT NULL;
CREATE INDEX IF NOT EXISTS image_generation_jobs_lease_idx
    ON image_generation_jobs (lease_until) WHERE status = 'running' AND kind IS NOT NULL;

ALTER TABLE generated_images
    ADD COLUMN IF NOT EXISTS prompt TEXT,
    ADD COLUMN IF NOT EXISTS storage_key TEXT,
    ADD COLUMN IF NOT EXISTS job_id UUID,
    ADD COLUMN IF NOT EXISTS model TEXT,
    ADD COLUMN IF NOT EXISTS pack_id UUID,
    ADD COLUMN IF NOT EXISTS visibility TEXT NOT NULL DEFAULT 'private',
    ADD COLUMN IF NOT EXISTS likes_count INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS width INTEGER,
    ADD COLUMN IF NOT EXISTS height INTEGER,
    ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ;

ALTER TABLE generated_images
    ADD CONSTRAINT generated_images_visibility_check CHECK (visibility IN ('private', 'public')),
    ADD CONSTRAINT generated_images_likes_count_check CHECK (likes_count >= 0);

CREATE UNIQUE INDEX IF NOT EXISTS generated_images_job_id_key
    ON generated_images (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS generated_images_user_created_idx
    ON generated_images (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS generated_images_public_created_idx
    ON generated_images (created_at DESC, id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL;

-- Job changes are announced on one channel, from whichever process made them, so that any
-- API instance can stream progress and idle workers wake up for new work.
CREATE OR REPLACE FUNCTION atelier_notify_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IS NOT NULL AND (TG_OP = 'INSERT'
        OR NEW.status IS DISTINCT FROM OLD.status
        OR NEW.progress IS DISTINCT FROM OLD.progress) THEN
        PERFORM pg_notify('atelier_jobs', json_build_object(
            'id', NEW.id, 'user_id', NEW.user_id, 'status', NEW.status,
            'progress', NEW.progress)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER image_generation_jobs_notify
    AFTER INSERT OR UPDATE ON image_generation_jobs
    FOR EACH ROW EXECUTE FUNCTION atelier_notify_job();
