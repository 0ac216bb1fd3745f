-- 008: the console's search (GET /calls?q=: a substring of the call id, the caller's number or
-- what was said) served by trigram indexes instead of reading every call and its turns.
--
-- pg_trgm ships with PostgreSQL (Debian: postgresql-contrib, part of the server package) and is a
-- trusted extension: a database owner may create it. Where it is missing or not allowed, nothing
-- is made and the search still works, by reading every call (docs/operations.md, "Call search").
-- On a large existing database this migration builds the indexes inside its transaction, blocking
-- writes meanwhile: build them first with CREATE INDEX CONCURRENTLY under the same names (the
-- statements below, IF NOT EXISTS, then do nothing).

DO $$
DECLARE
    trgm_schema text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_trgm not created (%): the call search reads every call', SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO trgm_schema
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NULL THEN
        RETURN;
    END IF;
    -- the operator class by its schema: the recorder's search_path holds only its own schema.
    -- One index per column: the planner prices a multi-column GIN index too high and reads every
    -- call instead.
    EXECUTE format('CREATE INDEX IF NOT EXISTS calls_call_id_trgm_idx ON calls'
        ' USING gin (call_id %I.gin_trgm_ops)', trgm_schema);
    EXECUTE format('CREATE INDEX IF NOT EXISTS calls_caller_trgm_idx ON calls'
        ' USING gin (caller %I.gin_trgm_ops)', trgm_schema);
    EXECUTE format('CREATE INDEX IF NOT EXISTS call_turns_user_text_trgm_idx ON call_turns'
        ' USING gin (user_text %I.gin_trgm_ops)', trgm_schema);
    EXECUTE format('CREATE INDEX IF NOT EXISTS call_turns_bot_text_trgm_idx ON call_turns'
        ' USING gin (bot_text %I.gin_trgm_ops)', trgm_schema);
END
$$;
