#!/usr/bin/env bash
# The project-local PostgreSQL cluster: the embedded default for a machine
# without a server at the default address (127.0.0.1:5432). The Makefile uses
# it only when EVENTSTORE_DSN / EVENTSTORE_TEST_DSN are not set and nothing
# answers there; a server on 5432 or a DSN you set always wins.
#
#   scripts/local-pg.sh port    the port the default DSNs use: the default
#                               port if a server answers there, else the
#                               local cluster's
#   scripts/local-pg.sh start   initdb (once) and start the local cluster, or
#                               reuse it if it is already running
#   scripts/local-pg.sh stop    stop it (nothing to stop is fine)
#
# Data, socket and log under .pgdata/ (git-ignored), port 54329, superuser
# `root`, trust authentication on 127.0.0.1 only (no other address, no
# socket connections from other users). Overrides, for tests:
# EVENTSTORE_DEFAULT_PORT (5432), EVENTSTORE_LOCAL_PORT (54329),
# EVENTSTORE_LOCAL_PGDATA (.pgdata), EVENTSTORE_PG_BIN (newest
# /usr/lib/postgresql/*/bin).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEFAULT_PORT="${EVENTSTORE_DEFAULT_PORT:-5432}"
LOCAL_PORT="${EVENTSTORE_LOCAL_PORT:-54329}"
ROOT="${EVENTSTORE_LOCAL_PGDATA:-$PWD/.pgdata}"
DATA="$ROOT/data"
LOG="$ROOT/postgresql.log"

die() { echo "local-pg: $*" >&2; exit 1; }

# Whether something accepts TCP connections on 127.0.0.1:$1 (no client tools
# needed; a refused connection answers at once).
answers() {
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    if [ -n "${EVENTSTORE_PG_BIN:-}" ]; then
        echo "$EVENTSTORE_PG_BIN"
        return
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    echo "${dir:-/usr/lib/postgresql/15/bin}"
}

require_server_binaries() {
    BIN="$(pg_bin)"
    [ -x "$BIN/initdb" ] && return
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "local-pg: installing postgresql (the server binaries)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        BIN="$(pg_bin)"
    fi
    [ -x "$BIN/initdb" ] \
        || die "no PostgreSQL server binaries ($BIN/initdb): run \`sudo apt-get install -y postgresql\`," \
            "or start a server on 127.0.0.1:$DEFAULT_PORT, or set EVENTSTORE_DSN / EVENTSTORE_TEST_DSN"
}

running() {
    [ -f "$DATA/postmaster.pid" ] && as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    require_server_binaries
    if [ -f "$DATA/PG_VERSION" ] && running; then
        echo "local-pg: the project's PostgreSQL is running on 127.0.0.1:$LOCAL_PORT ($DATA)"
        return
    fi
    if answers "$LOCAL_PORT"; then
        die "127.0.0.1:$LOCAL_PORT is taken by another program: set EVENTSTORE_LOCAL_PORT to a free port"
    fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
        echo "local-pg: creating the project's PostgreSQL cluster in $DATA"
        mkdir -p "$ROOT"
        if [ "$(id -u)" -eq 0 ]; then
            id postgres >/dev/null 2>&1 || die "no \`postgres\` OS user to run the server as"
            chown postgres: "$ROOT"
            as_postgres test -x "$ROOT" \
                || die "the postgres OS user cannot enter $ROOT: make its parent directories world-executable"
        fi
        chmod 700 "$ROOT"
        as_postgres "$BIN/initdb" -D "$DATA" -U root --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$ROOT/initdb.log" 2>&1 || die "initdb failed: see $ROOT/initdb.log"
        # Only 127.0.0.1; the socket (owner-only) in $ROOT.
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$ROOT'"
            echo "unix_socket_permissions = 0700"
        } >>"$DATA/postgresql.auto.conf"
        printf '%s\n' \
            "local all root trust" \
            "host all all 127.0.0.1/32 trust" >"$DATA/pg_hba.conf"
    fi
    echo "local-pg: starting the project's PostgreSQL on 127.0.0.1:$LOCAL_PORT ($DATA; \`make stop\` stops it)"
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "-p $LOCAL_PORT" -w -t 60 start >/dev/null \
        || die "PostgreSQL did not start: see $LOG"
}

stop() {
    if [ ! -f "$DATA/PG_VERSION" ]; then
        echo "local-pg: no project-local PostgreSQL to stop"
        return
    fi
    require_server_binaries
    if ! running; then
        echo "local-pg: the project's PostgreSQL is not running"
        return
    fi
    as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null \
        || die "PostgreSQL did not stop: see $LOG"
    echo "local-pg: stopped the project's PostgreSQL (127.0.0.1:$LOCAL_PORT; data kept in $DATA)"
}

case "${1:-}" in
    port)
        if answers "$DEFAULT_PORT"; then echo "$DEFAULT_PORT"; else echo "$LOCAL_PORT"; fi
        ;;
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 port|start|stop" ;;
esac
