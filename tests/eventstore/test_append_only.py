"""Append-only (DESIGN.md §2, invariant 1): the database itself refuses
UPDATE, DELETE and TRUNCATE on the log and on the idempotency keys.

Two lines of defence, each tested on its own: privileges stop the
application's writer role (SQLSTATE 42501), and statement triggers stop even
the table owner and superusers (SQLSTATE UT003). Every attempt runs in a
transaction that is rolled back, so a broken guard cannot damage the shared
test database for the tests that follow.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore import EventStore, NewEvent

TABLES = ["utcp.stored_events", "utcp.idempotency_keys"]

CHANGES = {
    "update stored_events": "UPDATE utcp.stored_events SET data = '{\"x\": 1}'::jsonb",
    "update one event": (
        "UPDATE utcp.stored_events SET type = 'Changed' WHERE stream_id = %(stream)s"
    ),
    "update a hash": (
        "UPDATE utcp.stored_events SET hash = '\\x00'::bytea WHERE stream_id = %(stream)s"
    ),
    "delete stored_events": "DELETE FROM utcp.stored_events",
    "delete one event": "DELETE FROM utcp.stored_events WHERE stream_id = %(stream)s",
    "delete none": "DELETE FROM utcp.stored_events WHERE false",
    "truncate stored_events": "TRUNCATE utcp.stored_events",
    "update idempotency_keys": "UPDATE utcp.idempotency_keys SET fingerprint = '\\x00'::bytea",
    "update one key": "UPDATE utcp.idempotency_keys SET stream_id = 'x' WHERE key = %(key)s",
    "delete idempotency_keys": "DELETE FROM utcp.idempotency_keys",
    "delete one key": "DELETE FROM utcp.idempotency_keys WHERE key = %(key)s",
    "truncate idempotency_keys": "TRUNCATE utcp.idempotency_keys",
    "truncate both": "TRUNCATE utcp.stored_events, utcp.idempotency_keys",
}


@pytest.fixture(scope="module")
def written(store: EventStore) -> dict[str, str]:
    """A stream and a key that exist, so each statement has rows to hit."""
    stream = f"guard-{uuid.uuid4().hex[:12]}"
    key = f"guard-key-{uuid.uuid4().hex}"
    store.append(stream, [NewEvent("A", {"n": 1}), NewEvent("B", {"n": 2})], idempotency_key=key)
    return {"stream": stream, "key": key}


@pytest.fixture
def writer(writer_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection as the application's writer role."""
    with psycopg.connect(writer_dsn, autocommit=True) as conn:
        yield conn


def snapshot(admin: psycopg.Connection[Any], written: dict[str, str]) -> tuple[Any, ...]:
    row = admin.execute(
        "SELECT (SELECT count(*) FROM utcp.stored_events),"
        " (SELECT count(*) FROM utcp.idempotency_keys),"
        " (SELECT array_agg(hash ORDER BY stream_version) FROM utcp.stored_events"
        "   WHERE stream_id = %(stream)s),"
        " (SELECT fingerprint FROM utcp.idempotency_keys WHERE key = %(key)s)",
        written,
    ).fetchone()
    assert row is not None
    return tuple(row)


def attempt(conn: psycopg.Connection[Any], statement: str, params: dict[str, str]) -> None:
    """Run ``statement`` in a transaction that is always rolled back."""
    with conn.transaction(force_rollback=True):
        conn.execute(statement, params if "%(" in statement else None)


@pytest.mark.parametrize("statement", list(CHANGES.values()), ids=list(CHANGES))
def test_writer_role_is_refused_by_privileges(
    writer: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
    written: dict[str, str],
    statement: str,
) -> None:
    before = snapshot(admin, written)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        attempt(writer, statement, written)
    assert info.value.sqlstate == "42501"
    assert snapshot(admin, written) == before


@pytest.mark.parametrize("statement", list(CHANGES.values()), ids=list(CHANGES))
def test_owner_and_superuser_are_refused_by_triggers(
    admin: psycopg.Connection[Any], written: dict[str, str], statement: str
) -> None:
    is_super = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert is_super.fetchone() == (True,)
    before = snapshot(admin, written)
    with pytest.raises(psycopg.Error) as info:
        attempt(admin, statement, written)
    assert info.value.sqlstate == "UT003", str(info.value)
    assert "append-only" in str(info.value)
    assert snapshot(admin, written) == before


def test_a_superuser_in_replica_mode_is_refused_too(
    admin: psycopg.Connection[Any], written: dict[str, str]
) -> None:
    """session_replication_role = replica silences ordinary triggers; the
    append-only ones fire always (sqitch change guards_always)."""
    before = snapshot(admin, written)
    statements = [
        *CHANGES.values(),
        "DELETE FROM utcp.chain_anchors",
        "TRUNCATE utcp.chain_anchors",
    ]
    for statement in statements:
        with pytest.raises(psycopg.Error) as info, admin.transaction(force_rollback=True):
            admin.execute("SET LOCAL session_replication_role = replica")
            admin.execute(statement, written if "%(" in statement else None)
        assert info.value.sqlstate == "UT003", statement
    assert snapshot(admin, written) == before


def test_table_owner_role_is_refused_by_triggers(
    admin: psycopg.Connection[Any], written: dict[str, str]
) -> None:
    """The owner as such (not only a superuser) meets the triggers."""
    row = admin.execute(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'utcp' AND tablename = 'stored_events'"
    ).fetchone()
    assert row is not None
    owner = row[0]
    before = snapshot(admin, written)
    for statement in CHANGES.values():
        with pytest.raises(psycopg.Error) as info, admin.transaction(force_rollback=True):
            admin.execute(
                psycopg.sql.SQL("SET LOCAL ROLE {}").format(psycopg.sql.Identifier(owner))
            )
            admin.execute(statement, written if "%(" in statement else None)
        assert info.value.sqlstate == "UT003", statement
    assert snapshot(admin, written) == before


@pytest.mark.parametrize("table", TABLES)
def test_writer_role_cannot_insert_directly(
    writer: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
    written: dict[str, str],
    table: str,
) -> None:
    statements = {
        "utcp.stored_events": (
            "INSERT INTO utcp.stored_events (event_id, stream_id, stream_version, type, data,"
            " occurred_at, hash) VALUES (gen_random_uuid(), %(stream)s || '-forged', 1, 'Forged',"
            " '{}', now(), '\\x00')"
        ),
        "utcp.idempotency_keys": (
            "INSERT INTO utcp.idempotency_keys (key, fingerprint, stream_id, first_version,"
            " last_version, first_event_id)"
            " VALUES (%(key)s || '-forged', '\\x00', %(stream)s, 1, 1, gen_random_uuid())"
        ),
    }
    before = snapshot(admin, written)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        attempt(writer, statements[table], written)
    assert snapshot(admin, written) == before


def test_writer_role_appends_only_through_the_append_function(
    writer: psycopg.Connection[Any], written: dict[str, str]
) -> None:
    """The writer role holds SELECT and EXECUTE on utcp.append_events, and
    no other privilege on the log."""
    row = writer.execute(
        "SELECT has_table_privilege('utcp.stored_events', 'SELECT'),"
        " has_table_privilege('utcp.stored_events', 'INSERT'),"
        " has_table_privilege('utcp.stored_events', 'UPDATE'),"
        " has_table_privilege('utcp.stored_events', 'DELETE'),"
        " has_table_privilege('utcp.stored_events', 'TRUNCATE'),"
        " has_table_privilege('utcp.idempotency_keys', 'INSERT'),"
        " has_table_privilege('utcp.idempotency_keys', 'SELECT'),"
        " has_function_privilege("
        "   'utcp.append_events(text, bigint, text, uuid, jsonb)', 'EXECUTE')"
    ).fetchone()
    assert row == (True, False, False, False, False, False, False, True)


def test_the_stores_own_connections_cannot_delete(store: EventStore) -> None:
    """The store's pooled connections (the writer role) cannot change the log either."""
    with store.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM utcp.stored_events")
