-- GET /v1/jobs: a user's service-made jobs, newest first, keyset-paged.
CREATE INDEX IF NOT EXISTS image_generation_jobs_user_created_idx
    ON image_generation_jobs (user_id, created_at DESC, id DESC)
    WHERE kind IS NOT NULL;
