#!/bin/sh
# One-shot job (temporalio/admin-tools): create and migrate the Temporal databases in PostgreSQL.
# Safe to run on every `docker compose up`: create-database ignores an existing database,
# setup-schema keeps a newer version, update-schema applies only what is missing.
set -eu
SCHEMA=/etc/temporal/schema/postgresql/v12
for database in "${TEMPORAL_DB:-temporal}:temporal" "${TEMPORAL_VISIBILITY_DB:-temporal_visibility}:visibility"; do
    name=${database%%:*}
    kind=${database##*:}
    echo "setting up ${kind} schema in database ${name} on ${SQL_HOST}:${SQL_PORT}"
    temporal-sql-tool --database "$name" create-database
    temporal-sql-tool --database "$name" setup-schema -v 0.0
    temporal-sql-tool --database "$name" update-schema -d "$SCHEMA/$kind/versioned"
done
echo "temporal schema is ready"
