-- Supabase compatibility: the roles PostgREST switches to and the auth.jwt() the policies
-- read, created only where they do not exist. On Supabase they exist already and are kept
-- exactly as they are (never altered or replaced); on plain PostgreSQL (tests, a local
-- server) they are created the way Supabase creates them, so the same policies run on both.
--
-- Roles are cluster-wide: a shared server may hold them from another database, or another
-- migration on the same server may create them at the same moment. Each CREATE ROLE
-- therefore tolerates finding the role there (checked first, and caught if it appears in
-- between).

DO $$
DECLARE
    wanted text[][] := ARRAY[
        ['anon', 'NOLOGIN NOINHERIT'],
        ['authenticated', 'NOLOGIN NOINHERIT'],
        ['service_role', 'NOLOGIN NOINHERIT BYPASSRLS']];
    i integer;
BEGIN
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted[i][1]) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', wanted[i][1], wanted[i][2]);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database on this server
            END;
        END IF;
    END LOOP;
END
$$;

-- auth.jwt() as Supabase defines it: the request's JWT claims, which PostgREST puts in
-- `request.jwt.claims` for the transaction (NULL outside a request).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE
        AS 'SELECT nullif(current_setting(''request.jwt.claims'', true), '''')::jsonb';
    END IF;
END
$$;
