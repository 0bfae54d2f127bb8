#!/bin/bash
# Runs once, when the PostgreSQL volume is first initialised: Laminar's own role and database
# (Temporal's databases are created by its auto-setup container).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$LAMINAR_DB_PASSWORD" <<'SQL'
CREATE ROLE laminar LOGIN PASSWORD :'password';
CREATE DATABASE laminar OWNER laminar;
SQL
