#!/bin/sh
# The service's own login role, a member of utcp_writer only (it appends,
# reads the log and the read models, and the API keys' hashes). Idempotent.
# $1: the role's name; EVENTSTORE_DSN: a superuser's connection.
set -eu
role="${1:-eventstore_service}"
psql "$EVENTSTORE_DSN" -v ON_ERROR_STOP=1 -v role="$role" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('GRANT utcp_writer TO %I', :'role') \gexec
SQL
