-- aggregate's role (suara_aggregate, created by the registry's 0002) writes this schema and nothing
-- else. Tables added later get the same by default.
GRANT USAGE ON SCHEMA aggregate TO suara_aggregate;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA aggregate TO suara_aggregate;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA aggregate TO suara_aggregate;
ALTER DEFAULT PRIVILEGES IN SCHEMA aggregate GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO suara_aggregate;
ALTER DEFAULT PRIVILEGES IN SCHEMA aggregate GRANT USAGE, SELECT ON SEQUENCES TO suara_aggregate;
