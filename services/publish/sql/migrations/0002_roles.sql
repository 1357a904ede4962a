-- publish's role (suara_publish, created by the registry's 0002) writes this schema and nothing
-- else; tables added later get the same by default.
GRANT USAGE ON SCHEMA publish TO suara_publish;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA publish TO suara_publish;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA publish TO suara_publish;
ALTER DEFAULT PRIVILEGES IN SCHEMA publish GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO suara_publish;
ALTER DEFAULT PRIVILEGES IN SCHEMA publish GRANT USAGE, SELECT ON SEQUENCES TO suara_publish;
