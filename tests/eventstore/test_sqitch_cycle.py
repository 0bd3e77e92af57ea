"""The schema's whole life under Sqitch, through the project's own CLI:
deploy → verify → revert → deploy again, on a brand-new empty database.

Each CLI call starts Python and Sqitch (about a second): the cycle is one
test, in the order an operator would run it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventstore import EventStore, NewEvent, SchemaNotDeployed, Settings
from tests.support.database import admin_dsn, drop_database, dsn_for, run_cli, unique_name


@pytest.fixture
def empty_db_name(database_dsn: str) -> Iterator[str]:
    """The name of a database that does not exist yet (deploy creates it).

    Depends on the session database on purpose: while that one grants the
    utcp_* roles something, reverting here cannot drop those cluster-wide
    roles from under the rest of the session.
    """
    name = unique_name("utcp_cycle")
    try:
        yield name
    finally:
        drop_database(name)


def last_planned_change() -> str:
    """The newest change in sqitch.plan: what `db status` reports as deployed."""
    plan = Path(__file__).resolve().parents[2] / "sqitch.plan"
    changes = [
        line.split()[0]
        for line in plan.read_text().splitlines()
        if line.strip() and not line.startswith(("%", "#", "@"))
    ]
    return changes[-1]


def database_exists(name: str) -> bool:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def schema_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regnamespace('utcp') IS NOT NULL,"
            " to_regclass('utcp.stored_events') IS NOT NULL,"
            " to_regclass('utcp.idempotency_keys') IS NOT NULL,"
            " to_regclass('utcp.stored_events_global_order') IS NOT NULL,"
            " to_regprocedure("
            "'utcp.append_events(text, bigint, text, uuid, jsonb)') IS NOT NULL"
        ).fetchone()
    assert row is not None
    return dict(zip(["schema", "events", "keys", "index", "append"], row, strict=True))


def append_and_read(dsn: str) -> None:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as store:
        stream = f"cycle-{uuid.uuid4().hex[:8]}"
        result = store.append(stream, [NewEvent("Deployed", {"ok": True})])
        assert result.last_version == 1
        assert [e.data for e in store.read_stream(stream)] == [{"ok": True}]
        assert store.verify_chain().ok


def test_deploy_verify_revert_deploy_on_an_empty_database(empty_db_name: str) -> None:
    dsn = dsn_for(empty_db_name)
    assert not database_exists(empty_db_name)

    run_cli("db", "deploy", "--dsn", dsn)
    assert database_exists(empty_db_name)
    assert all(schema_state(dsn).values())
    run_cli("db", "verify", "--dsn", dsn)
    status = run_cli("db", "status", "--dsn", dsn)
    assert last_planned_change() in status.stdout + status.stderr
    append_and_read(dsn)

    # deploy is idempotent: nothing left to deploy is success
    again = run_cli("db", "deploy", "--dsn", dsn, check=False)
    assert again.returncode == 0, again.stderr
    assert all(schema_state(dsn).values())

    # the log holds events: a revert asks for --yes and changes nothing
    refused = run_cli("db", "revert", "--dsn", dsn, "--to", "stored_events", check=False)
    assert refused.returncode == 1
    assert "the log holds 1 event:" in refused.stderr and "--yes" in refused.stderr
    assert all(schema_state(dsn).values())

    # revert down to a change keeps that change and the ones before it
    run_cli("db", "revert", "--dsn", dsn, "--to", "stored_events", "--yes")
    partial = schema_state(dsn)
    assert partial["schema"] and partial["events"]
    assert not partial["keys"] and not partial["index"] and not partial["append"]

    reverted = run_cli("db", "revert", "--dsn", dsn, "--yes", check=False)
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    assert schema_state(dsn) == dict.fromkeys(
        ("schema", "events", "keys", "index", "append"), False
    )
    # status says nothing is deployed, and is not an error
    after_revert = run_cli("db", "status", "--dsn", dsn, check=False)
    assert after_revert.returncode == 0, after_revert.stdout + after_revert.stderr
    assert "Traceback" not in after_revert.stderr

    run_cli("db", "deploy", "--dsn", dsn)
    assert all(schema_state(dsn).values())
    run_cli("db", "verify", "--dsn", dsn)
    append_and_read(dsn)


@pytest.mark.parametrize("command", ["deploy", "verify", "status", "revert"])
def test_a_wrong_dsn_fails_with_one_clear_line(command: str) -> None:
    dsn = dsn_for(f"utcp_nowhere_{uuid.uuid4().hex[:6]}", host="127.0.0.1", port="1")
    proc = run_cli("db", command, "--dsn", dsn, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("eventstore: error:")]
    assert len(ours) == 1, proc.stderr
    if command == "deploy":
        # nothing else on stderr: one line says what went wrong
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "127.0.0.1" in proc.stderr and ":1" in proc.stderr


def test_open_store_on_an_undeployed_database_fails_clearly(empty_db_name: str) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(empty_db_name)))
    with pytest.raises(SchemaNotDeployed) as info:
        EventStore.open(dsn_for(empty_db_name), Settings(pool_min_size=1))
    assert "eventstore db deploy" in str(info.value)


def test_deploy_without_sqitch_says_how_to_install_it_and_creates_nothing(
    empty_db_name: str, tmp_path: Path
) -> None:
    dsn = dsn_for(empty_db_name)
    no_tools = {**os.environ, "PATH": str(tmp_path)}  # no sqitch, no psql
    proc = run_cli("db", "deploy", "--dsn", dsn, check=False, env=no_tools)
    assert proc.returncode == 1
    assert "sqitch is not installed: run `sudo apt-get install -y sqitch" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not database_exists(empty_db_name)
