-- Only the service erases an account (it also deletes the data and the stored files): a
-- client role (the mobile app through Supabase) may not set or clear `erased_at` on its own
-- row, which would lock the account while leaving its data behind. The owner role is not
-- affected: the service's erasure sets the column, and the tombstone trigger keeps it final.

CREATE OR REPLACE FUNCTION atelier_users_client_erasure_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_user IN ('anon', 'authenticated')
       AND NEW.erased_at IS DISTINCT FROM
           (CASE WHEN TG_OP = 'UPDATE' THEN OLD.erased_at ELSE NULL END) THEN
        RAISE EXCEPTION
            'users_erased_at_service_only: only the service erases an account (DELETE /v1/me)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER users_client_erasure_guard
    BEFORE INSERT OR UPDATE OF erased_at ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_users_client_erasure_guard();
