-- Workers wake on a channel of their own (issue 9, point 2). A job's every change goes out
-- on atelier_jobs, for the API's streams; a worker only needs to hear that a job was queued
-- (a new one, a retry, one handed back). On atelier_jobs a worker process received and
-- decoded four or five notifications per job to act on one; atelier_queue carries just that
-- one, with the job's id, and only when the job can be claimed now: a retry waiting for its
-- backoff would wake every idle worker for a claim that finds nothing (the worker that put
-- it back wakes itself when it is due; the others find it by their poll).
CREATE OR REPLACE FUNCTION atelier_notify_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IS NOT NULL AND (TG_OP = 'INSERT'
        OR NEW.status IS DISTINCT FROM OLD.status
        OR NEW.progress IS DISTINCT FROM OLD.progress) THEN
        PERFORM pg_notify('atelier_jobs', json_build_object(
            'id', NEW.id, 'user_id', NEW.user_id, 'status', NEW.status,
            'progress', NEW.progress)::text);
        IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending')
                AND COALESCE(NEW.available_at, now()) <= now() THEN
            PERFORM pg_notify('atelier_queue', json_build_object('id', NEW.id)::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
