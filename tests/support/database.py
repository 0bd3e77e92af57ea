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
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
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


def unique_name(prefix: str) -> str:
    """A database (or other object) name no other run on the shared server uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def drop_database(name: str) -> None:
    """Drop a database this run created (its sessions are ended)."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def deployed_database(prefix: str, *, setup_sql: str | None = None) -> Iterator[str]:
    """The one throwaway database of the suite: uniquely named, deployed
    through `eventstore db deploy`, then ``setup_sql`` run in it as the
    superuser (test-only triggers and the like), dropped on exit (also when
    the body fails). Yields its superuser DSN; :func:`as_role` gives the
    same database as another login role."""
    _require_postgres()
    name = unique_name(prefix)
    dsn = dsn_for(name)
    try:
        run_cli("db", "deploy", "--dsn", dsn)
        if setup_sql:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(setup_sql.encode())
        yield dsn
    finally:
        drop_database(name)


def as_role(dsn: str, role_dsn: str) -> str:
    """``dsn``'s database, logged in as ``role_dsn``'s user (a role is
    cluster-wide: the session's writer role works in every test database)."""
    return dsn_for(str(conninfo_to_dict(dsn)["dbname"]), user=conninfo_to_dict(role_dsn)["user"])


# -- counting rows ------------------------------------------------------------------


def one_value(dsn: str, query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query`` (None without a row),
    on a connection of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    return None if row is None else row[0]


def log_counts(conn: psycopg.Connection[Any] | str) -> tuple[int, int]:
    """(events in the log, idempotency keys kept): what a refused call must
    leave unchanged."""
    query = (
        "SELECT (SELECT count(*) FROM utcp.stored_events),"
        " (SELECT count(*) FROM utcp.idempotency_keys)"
    )
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as own:
            row = own.execute(query).fetchone()
    else:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def event_rows(
    dsn: str,
    *,
    stream_ids: Sequence[str] | None = None,
    event_ids: Sequence[uuid.UUID] | None = None,
    through: str | None = None,
    type: str | None = None,
) -> int:
    """Stored events (all of them, or only: of these streams, with these
    ids, up to and including checkpoint ``through``, of one ``type``)."""
    tx, pos = (through or "18446744073709551615/9223372036854775807").split("/")
    return int(
        one_value(
            dsn,
            "SELECT count(*) FROM utcp.stored_events"
            " WHERE (%(streams)s::text[] IS NULL OR stream_id = ANY(%(streams)s))"
            "   AND (%(ids)s::uuid[] IS NULL OR event_id = ANY(%(ids)s))"
            "   AND (tx_id, position) <= (%(tx)s::xid8, %(pos)s)"
            "   AND (%(type)s::text IS NULL OR type = %(type)s)",
            {
                "streams": None if stream_ids is None else list(stream_ids),
                "ids": None if event_ids is None else list(event_ids),
                "tx": tx,
                "pos": int(pos),
                "type": type,
            },
        )
    )


def rows_per_event_id(dsn: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many times each of ``ids`` is stored (absent: not stored)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT event_id, count(*) FROM utcp.stored_events WHERE event_id = ANY(%s) "
            "GROUP BY event_id",
            (list(ids),),
        ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def key_rows(dsn: str, key: str) -> int:
    """Rows kept for idempotency key ``key`` (0 or 1)."""
    return int(one_value(dsn, "SELECT count(*) FROM utcp.idempotency_keys WHERE key = %s", (key,)))


# -- waiting ------------------------------------------------------------------------

#: A generous bound for things that take well under a second.
WAIT = 60.0


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def pooled_connection(store: EventStore) -> Iterator[psycopg.Connection[Any]]:
    """White box: a connection of ``store``'s own pool (its role, its
    session settings, autocommit). The public API has no raw connection;
    read models use the read-only ``EventStore.query``."""
    with store._db.raw_connection() as conn:
        yield conn


@pytest.fixture(scope="session")
def database_dsn() -> Iterator[str]:
    """A fresh database with the schema deployed through `eventstore db deploy`."""
    with deployed_database("utcp_test") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the test module's own (superuser DSN), named after the
    module, dropped after it: for modules that read the whole log, stop a
    projection for good or hold its locks."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with deployed_database(f"utcp_{module}"[:40]) as own:
        yield own


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
