-- The database roles the services connect as (docs/architecture.md, "Database roles"): one per
-- service, which may write only its own schema (granted in that service's migrations) and read this
-- one. They are NOLOGIN groups: a deployment logs in as a member of each (the embedded server gives
-- them a password and LOGIN itself). The first migration creates them when the migrating role may
-- create roles; on a server where it may not, an operator creates them beforehand (see the runbook).
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['suara_tally', 'suara_aggregate', 'suara_publish'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- roles are the whole server's: another database's migration created it meanwhile
            END;
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA registry TO suara_tally, suara_aggregate, suara_publish;
GRANT SELECT ON ALL TABLES IN SCHEMA registry TO suara_tally, suara_aggregate, suara_publish;
ALTER DEFAULT PRIVILEGES IN SCHEMA registry GRANT SELECT ON TABLES TO suara_tally, suara_aggregate, suara_publish;
