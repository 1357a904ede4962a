-- tally's role (suara_tally, created by the registry's 0002) writes this schema and nothing else;
-- tables added later get the same by default.
GRANT USAGE ON SCHEMA tally TO suara_tally;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tally TO suara_tally;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA tally TO suara_tally;
ALTER DEFAULT PRIVILEGES IN SCHEMA tally GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO suara_tally;
ALTER DEFAULT PRIVILEGES IN SCHEMA tally GRANT USAGE, SELECT ON SEQUENCES TO suara_tally;
