#!/bin/sh
# Run once by the official postgres image when it initialises an empty data volume
# (/docker-entrypoint-initdb.d/): the three service roles suara's migrations grant to, and one login
# per service in each (docs/runbook.md, "The database"). The migrations, run later as the owner
# (POSTGRES_USER), find the roles and only grant. Passwords come from the environment (deploy/.env).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v tally="$TALLY_DB_PASSWORD" -v aggregate="$AGGREGATE_DB_PASSWORD" -v publish="$PUBLISH_DB_PASSWORD" <<'SQL'
CREATE ROLE suara_tally NOLOGIN;
CREATE ROLE suara_aggregate NOLOGIN;
CREATE ROLE suara_publish NOLOGIN;
CREATE ROLE tally_login LOGIN PASSWORD :'tally' IN ROLE suara_tally;
CREATE ROLE aggregate_login LOGIN PASSWORD :'aggregate' IN ROLE suara_aggregate;
CREATE ROLE publish_login LOGIN PASSWORD :'publish' IN ROLE suara_publish;
SQL
