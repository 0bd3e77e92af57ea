#!/usr/bin/env bash
# Idempotent set-up of a development machine: the .venv, Sqitch and psql, and a
# reachable PostgreSQL. Safe to run again and again (the Makefile does).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DSN="${EVENTSTORE_DSN:-postgresql://root@127.0.0.1:5432/test}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
# The project's optional extras to install: dev always; `make bench` adds
# bench (the eventsourcing library, for the benchmark's comparison only).
EXTRAS="${EVENTSTORE_EXTRAS:-dev,service}"
STAMP="$VENV/.installed-${EXTRAS//,/-}"

die() { echo "bootstrap: $*" >&2; exit 1; }

# 1. Python virtual environment with the project and its dev tools.
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer"
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    || die "$PYTHON does not run: install Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or newer is needed, $PYTHON is $version (set PYTHON=python3.11 or newer)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV" \
        || die "cannot create a venv: on Debian/Ubuntu run \`sudo apt-get install -y python3-venv\`"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "bootstrap: installing the project into $VENV"
    "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
    touch "$STAMP"
fi

# 2. Sqitch (with the PostgreSQL driver) and the psql client it drives.
if ! command -v sqitch >/dev/null || ! command -v psql >/dev/null \
    || ! perl -MDBD::Pg -e 1 2>/dev/null; then
    packages="sqitch libdbd-pg-perl postgresql-client"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo -n"; fi
    if command -v apt-get >/dev/null && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "bootstrap: installing $packages"
        $sudo apt-get update -qq
        # shellcheck disable=SC2086 # $packages is a word list on purpose
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
    else
        die "sqitch, DBD::Pg and psql are needed: run \`sudo apt-get install -y $packages\`" \
            "(Debian/Ubuntu) or see https://sqitch.org/download/"
    fi
fi

# 2b. pgBackRest, for `make drill` and the run book's backups. Optional here:
# without it (no apt-get, no root) the drill says how to install it.
if ! command -v pgbackrest >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo -n"; fi
    if command -v apt-get >/dev/null && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "bootstrap: installing pgbackrest"
        { $sudo apt-get update -qq \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; } \
            || echo "bootstrap: could not install pgbackrest (make drill needs it)" >&2
    else
        echo "bootstrap: pgbackrest is not installed (make drill needs it):" \
            "sudo apt-get install -y pgbackrest" >&2
    fi
fi

# 3. A PostgreSQL server answering at the DSN. When the Makefile's default DSNs
# point at the project-local cluster (no DSN set, nothing on 127.0.0.1:5432),
# start it (or reuse it): scripts/local-pg.sh, stopped by `make stop`.
if [ "${EVENTSTORE_LOCAL_PG:-}" = 1 ]; then
    scripts/local-pg.sh start || exit 1
fi
if command -v pg_isready >/dev/null; then
    pg_isready -q -d "$DSN" && up=1 || up=0
else
    "$VENV/bin/python" -c 'import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=5).close()' \
        "$DSN" 2>/dev/null && up=1 || up=0
fi
if [ "$up" -ne 1 ]; then
    echo "bootstrap: PostgreSQL is not reachable at $DSN. Start it:" >&2
    echo "  local Debian/Ubuntu install: sudo pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
    echo "  with Docker:                 docker compose up -d" >&2
    exit 1
fi
echo "bootstrap: ready"
