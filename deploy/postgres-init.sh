#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory (docker-entrypoint-initdb.d).
# The application's own role and database; the Temporal schema job creates temporal and temporal_visibility.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v app_user="${TAKEBACK_DB_USER:-takeback}" -v app_password="${TAKEBACK_DB_PASSWORD:-takeback}" -v app_db="${TAKEBACK_DB_NAME:-takeback}" <<'SQL'
CREATE ROLE :"app_user" WITH LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
SQL
