"""Integration fixtures: one fresh database per test session.

The database is created through the admin DSN in ``EVENTSTORE_TEST_DSN``
(default: the local server's ``postgres`` database), the schema is deployed
by the project's own ``eventstore db deploy`` (Sqitch), and the database is
dropped at the end. A missing PostgreSQL or Sqitch fails the run: a green
run that tested nothing would be worse than a red one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore import EventStore, Settings
from trading import StorageAdapter, trading_registry

ADMIN_DSN_ENV = "EVENTSTORE_TEST_DSN"
DEFAULT_ADMIN_DSN = "postgresql://root@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get(ADMIN_DSN_ENV) or DEFAULT_ADMIN_DSN


def dsn_for(dbname: str, **overrides: Any) -> str:
    params = conninfo_to_dict(admin_dsn())
    params.update(dbname=dbname, **overrides)
    return make_conninfo(**params)


def _require_postgres() -> None:
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.exit(
            f"PostgreSQL is not reachable at {ADMIN_DSN_ENV}={admin_dsn()!r}: {exc}. "
            "Start it (README: 'Running PostgreSQL') — integration tests never skip.",
            returncode=1,
        )
    for tool in ("sqitch", "psql"):
        if shutil.which(tool) is None:
            pytest.exit(
                f"{tool} is not installed: run `make bootstrap` (installs sqitch, "
                "libdbd-pg-perl and postgresql-client) — integration tests never skip.",
                returncode=1,
            )


def run_cli(
    *args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the project's own ``eventstore`` command, as a user would
    (``env``: its whole environment, default this process's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "storectl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"eventstore {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@contextmanager
def deployed_database(prefix: str) -> Iterator[str]:
    """A throwaway database, deployed through `eventstore db deploy`, dropped
    on exit (also when the body fails). Yields its DSN."""
    _require_postgres()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    dsn = dsn_for(name)
    run_cli("db", "deploy", "--dsn", dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def database_dsn() -> Iterator[str]:
    """A fresh database with the schema deployed through `eventstore db deploy`."""
    with deployed_database("utcp_test") as dsn:
        yield dsn


@contextmanager
def login_role(dsn: str, *groups: str, own_schema: bool = False) -> Iterator[str]:
    """A fresh login role, uniquely named, member of ``groups``, optionally
    owning a schema of its own (as an attacker with a sandbox would), in the
    database of ``dsn``. Yields that role's DSN; on exit its sessions are
    ended and the role, its schema and everything it owns are dropped, so no
    test leaves a login role in the cluster."""
    role = f"utcp_t_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        for group in groups:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), ident))
        if own_schema:
            conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(ident, ident))
    params = conninfo_to_dict(dsn)
    params["user"] = role
    try:
        yield make_conninfo(**params)
    finally:
        drop_login_role(dsn, role)


def drop_login_role(dsn: str, role: str) -> None:
    """End ``role``'s sessions, drop what it owns here, and drop it."""
    ident = sql.Identifier(role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


@pytest.fixture(scope="session")
def writer_dsn(database_dsn: str) -> Iterator[str]:
    """A login role that is only a member of utcp_writer: the least privilege
    the application needs. The store under test connects as this role; it
    is unique to the run and dropped at its end."""
    with login_role(database_dsn, "utcp_writer") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def store(writer_dsn: str) -> Iterator[EventStore]:
    """The store, connected as the writer role, shared by the session."""
    settings = Settings(pool_min_size=1, pool_max_size=12, retry_timeout=20.0)
    with EventStore.open(writer_dsn, settings, registry=trading_registry()) as s:
        yield s


@pytest.fixture
def adapter(store: EventStore) -> StorageAdapter:
    return StorageAdapter(store)


@pytest.fixture
def admin(database_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the test database (autocommit)."""
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def stream() -> str:
    """A stream id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
