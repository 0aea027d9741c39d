-- A pack's icons asked for in one request (POST /v1/packs/{id}/generations) are one set:
-- each of its jobs carries the set's id in params->>'set_id', and GET
-- /v1/packs/{id}/generations/{set_id} reads them back by it. No new table: the set is its
-- jobs, charged and created in one statement (app/db/jobs.py create_set_with_debit).
CREATE INDEX IF NOT EXISTS image_generation_jobs_set_idx
    ON image_generation_jobs (user_id, (params->>'set_id'))
    WHERE params ? 'set_id';
