"""Hostile roles against the operators' tools: anchors, status, secrets.

Each attacker is a fresh login role (``login_role``), dropped afterwards,
using plain psycopg connections the way an application sharing the cluster
could. Every test here failed against the code before Sqitch change
``anchor_guarded``:

* a writer took anchors (anchoring is an operator's act);
* a session holding an old REPEATABLE READ snapshot chained an anchor onto
  a stale one, and ``verify`` failed for ever after;
* a session holding the anchors' lock made ``eventstore anchor`` wait
  until the statement timeout, without saying who held it;
* a planted ``sha256`` made ``anchor_log()`` (SECURITY DEFINER, no pinned
  search_path) compute what the attacker wanted, as the owner;
* ``status`` run as a non-superuser did not see another role's open
  transaction (pg_stat_activity hides it);
* a DSN's password showed in the error of a malformed DSN, and
  ``sslpassword`` went on the command lines of ``sqitch`` and ``psql``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from eventstore import EventStore, NewEvent, Settings, StorageError
from tests.support.database import (
    deployed_database,
    drop_database,
    dsn_for,
    login_role,
    run_cli,
    unique_name,
)
from tests.support.horizon import wait_for_horizon

#: A safety net, so that the old code fails instead of hanging.
SETTINGS = Settings(pool_min_size=1, pool_max_size=2, statement_timeout=30.0)
POLL_SECONDS = 20.0


@pytest.fixture(scope="module")
def anchor_db() -> Iterator[str]:
    """A database of its own: these tests take anchors and check the whole log."""
    with deployed_database("utcp_hostile_ops") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def operator(anchor_db: str) -> Iterator[EventStore]:
    """The store as an operator would run `eventstore anchor` (not a superuser)."""
    with login_role(anchor_db, "utcp_operator") as dsn, EventStore.open(dsn, SETTINGS) as store:
        yield store


def _append(store: EventStore, n: int = 1) -> None:
    store.append(f"ops-{uuid.uuid4().hex[:10]}", [NewEvent("Step", {"n": i}) for i in range(n)])


def _verify_ok(store: EventStore) -> None:
    report = store.verify_chain()
    assert report.ok, report
    assert report.anchors_checked >= 1


# -- anchors: an operator's act ------------------------------------------------


def test_a_writer_cannot_anchor(anchor_db: str, operator: EventStore) -> None:
    _append(operator)
    with login_role(anchor_db, "utcp_writer", own_schema=True) as writer_dsn:
        with EventStore.open(writer_dsn, SETTINGS) as writer, pytest.raises(StorageError) as info:
            writer.anchor()
        assert "anchors are taken by operators" in str(info.value)
        assert "utcp_operator" in str(info.value)
        assert info.value.sqlstate == "42501"
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            for call in ("utcp.anchor_log()", "utcp.take_anchor()"):
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM {call}")
            # Nor can it take the anchorers' lock to hold them off.
            for mode in ("SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"):
                with pytest.raises(pg_errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(f"LOCK TABLE utcp.chain_anchors IN {mode} MODE")
    with (
        login_role(anchor_db, "utcp_projector") as projector_dsn,
        psycopg.connect(projector_dsn, autocommit=True) as conn,
        pytest.raises(pg_errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM utcp.anchor_log()")
    anchor = operator.anchor()  # the legitimate use
    assert anchor is not None
    _verify_ok(operator)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_stale_snapshot_cannot_chain_a_stale_anchor(
    anchor_db: str, operator: EventStore, isolation: str
) -> None:
    _append(operator)
    operator.anchor()
    with (
        login_role(anchor_db, "utcp_operator") as attacker_dsn,
        psycopg.connect(attacker_dsn) as stale,
    ):
        stale.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        stale.execute("SELECT count(*) FROM utcp.chain_anchors")  # the snapshot is taken
        _append(operator)
        newer = operator.anchor()  # commits an anchor the stale snapshot cannot see
        assert newer is not None
        _append(operator)  # something new for the attacker to anchor
        wait_for_horizon(operator)
        with pytest.raises(pg_errors.InvalidTransactionState) as info:
            stale.execute("SELECT * FROM utcp.anchor_log()")
        assert "READ COMMITTED" in str(info.value)
        stale.rollback()
    _verify_ok(operator)
    latest = operator.anchor()
    assert latest is not None and latest.anchor_id >= newer.anchor_id
    _verify_ok(operator)


def test_anchors_in_an_older_read_committed_transaction_see_the_latest_anchor(
    anchor_db: str, operator: EventStore
) -> None:
    _append(operator)
    with login_role(anchor_db, "utcp_operator") as other_dsn, psycopg.connect(other_dsn) as conn:
        started = conn.execute("SELECT now()").fetchone()
        assert started is not None
        first = operator.anchor()  # committed while conn's transaction is open
        assert first is not None
        _append(operator)
        wait_for_horizon(operator)
        row = conn.execute("SELECT anchor_id, created_at FROM utcp.anchor_log()").fetchone()
        conn.commit()
    assert row is not None
    assert row[0] > first.anchor_id
    # The time of the anchor, not of the start of its transaction.
    assert row[1] > started[0]
    _verify_ok(operator)


def test_a_session_in_the_way_makes_anchor_fail_within_the_bound_naming_it(
    anchor_db: str, operator: EventStore
) -> None:
    _append(operator)
    with (
        login_role(anchor_db, "utcp_operator") as holder_dsn,
        psycopg.connect(holder_dsn, application_name="hostile-holder") as holder,
    ):
        holder.execute("SELECT * FROM utcp.anchor_log()")  # holds the lock, idle in transaction
        holder_pid = holder.info.backend_pid
        role = conninfo_user(holder_dsn)
        with pytest.raises(StorageError) as info:
            operator.anchor(lock_timeout=0.5)
        message = str(info.value)
        assert info.value.sqlstate == "55P03", message
        assert f"pid {holder_pid}" in message
        assert role in message and "hostile-holder" in message
        assert "idle in transaction" in message
        # A caller that sets no lock_timeout at all (cron running psql) is
        # bounded by the function itself.
        with psycopg.connect(anchor_db, autocommit=True) as direct:
            direct.execute("SET statement_timeout = '30s'")  # the old code waited for ever
            direct.execute("SET lock_timeout = 0")
            with pytest.raises(pg_errors.LockNotAvailable) as direct_info:
                direct.execute("SELECT * FROM utcp.anchor_log()")
        assert f"pid {holder_pid}" in str(direct_info.value)
        holder.rollback()
    assert operator.anchor() is not None
    _verify_ok(operator)


def test_readers_of_the_anchors_never_block_anchoring(anchor_db: str, operator: EventStore) -> None:
    _append(operator)
    with (
        login_role(anchor_db, "utcp_reader") as reader_dsn,
        login_role(anchor_db, "utcp_writer") as writer_dsn,
        psycopg.connect(reader_dsn) as reader,
        psycopg.connect(writer_dsn) as writer,
    ):
        reader.execute("SELECT count(*) FROM utcp.chain_anchors")  # ACCESS SHARE, kept
        writer.execute("LOCK TABLE utcp.chain_anchors IN ACCESS SHARE MODE")
        with pytest.raises(pg_errors.InsufficientPrivilege):
            writer.execute("SELECT * FROM utcp.anchor_log()")  # the old way to hold the lock
        writer.rollback()
        writer.execute("SELECT * FROM utcp.chain_anchors")
        anchor = operator.anchor(lock_timeout=5)
        assert anchor is not None
    _verify_ok(operator)


def test_a_planted_search_path_does_not_change_what_anchor_log_computes(
    anchor_db: str, operator: EventStore
) -> None:
    _append(operator, 3)
    wait_for_horizon(operator)
    with login_role(anchor_db, "utcp_operator", own_schema=True) as attacker_dsn:
        role = conninfo_user(attacker_dsn)
        with psycopg.connect(attacker_dsn, autocommit=True) as conn:
            evil = sql.Identifier(role)
            payload = sql.SQL(
                "BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);"
                " EXCEPTION WHEN OTHERS THEN NULL; END;"
            )
            for schema in (evil, sql.Identifier("pg_temp")):
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION {s}.sha256(bytea) RETURNS bytea LANGUAGE plpgsql AS $$"
                        " BEGIN {p} RETURN '\\xdeadbeef'::bytea; END $$"
                    ).format(s=schema, p=payload)
                )
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {s}.agg_step(bytea, bytea, bytea) RETURNS bytea"
                    " LANGUAGE sql AS $$ SELECT '\\x00'::bytea $$;"
                    "CREATE AGGREGATE {s}.string_agg(bytea, bytea)"
                    " (SFUNC = {s}.agg_step, STYPE = bytea);"
                    "CREATE FUNCTION {s}.cat(bytea, bytea) RETURNS bytea"
                    " LANGUAGE sql AS $$ SELECT '\\x01'::bytea $$;"
                    "CREATE OPERATOR {s}.|| (LEFTARG = bytea, RIGHTARG = bytea,"
                    " FUNCTION = {s}.cat)"
                ).format(s=evil)
            )
            conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(evil))
            row = conn.execute("SELECT anchor_id, events, digest FROM utcp.anchor_log()").fetchone()
            assert row is not None
            superuser = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = session_user"
            ).fetchone()
        assert superuser == (False,), "a planted function ran as the functions' owner"
    with psycopg.connect(anchor_db, autocommit=True) as admin:
        hashes = [
            bytes(h)
            for (h,) in admin.execute(
                "SELECT hash FROM utcp.stored_events ORDER BY tx_id, position"
            ).fetchall()
        ]
        previous = admin.execute(
            "SELECT digest FROM utcp.chain_anchors WHERE anchor_id < %s"
            " ORDER BY anchor_id DESC LIMIT 1",
            (row[0],),
        ).fetchone()
        covered_before = admin.execute(
            "SELECT coalesce(max(events), 0) FROM utcp.chain_anchors WHERE anchor_id < %s",
            (row[0],),
        ).fetchone()
    assert covered_before is not None
    since = b"".join(hashes[covered_before[0] : row[1]])
    expected = hashlib.sha256(
        (bytes(previous[0]) if previous else b"") + hashlib.sha256(since).digest()
    ).digest()
    assert bytes(row[2]) == expected
    _verify_ok(operator)


def conninfo_user(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["user"])


# -- status sees every role's transaction ------------------------------------------


def test_status_as_a_writer_sees_another_roles_open_transaction(database_dsn: str) -> None:
    marker = f"hostile-query-{uuid.uuid4().hex[:8]}"
    with (
        login_role(database_dsn) as stranger_dsn,
        login_role(database_dsn, "utcp_writer") as writer_dsn,
        psycopg.connect(stranger_dsn, application_name="hostile-stall") as stranger,
        EventStore.open(writer_dsn, SETTINGS) as writer,
    ):
        began = time.monotonic()
        stranger.execute("SELECT pg_current_xact_id(), %s", (marker,))  # holds an xid, idles
        pid = stranger.info.backend_pid
        role = conninfo_user(stranger_dsn)
        deadline = time.monotonic() + POLL_SECONDS
        while True:
            status = writer.status()
            if status.oldest_transaction_pid == pid or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if status.oldest_transaction_pid == pid:
            assert status.oldest_transaction_role == role
            assert status.oldest_transaction_application == "hostile-stall"
            assert status.oldest_transaction_state == "idle in transaction"
        else:  # a transaction elsewhere in the cluster is older still: it is shown, with its age
            assert status.oldest_transaction_role is not None, status
            assert status.oldest_transaction_seconds is not None
            assert status.oldest_transaction_seconds >= time.monotonic() - began - 1
        assert status.oldest_transaction_seconds is not None
        assert status.oldest_transaction_seconds > 0
        # Exit 1 once it is older than EVENTSTORE_STALL_THRESHOLD: not asked here.
        proc = run_cli("status", "--json", "--dsn", writer_dsn, check=False)
        record = json.loads(proc.stdout)
        assert record["oldest_transaction_pid"] is not None
        assert record["oldest_transaction_seconds"] > 0
        assert marker not in proc.stdout + proc.stderr  # never the query text
        stranger.rollback()


# -- secrets -------------------------------------------------------------------------

PW = "pw-S3cret-h3"
SSL_PW = "ssl-S3cret-h3"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://root:{PW}@[::1/utcp?sslpassword={SSL_PW}",
        f"postgresql://root:{PW}%zz@127.0.0.1/utcp",
    ],
)
@pytest.mark.parametrize("command", [("status",), ("db", "status"), ("db", "revert")])
def test_a_malformed_dsn_shows_no_secret_on_the_command_line(
    dsn: str, command: tuple[str, ...]
) -> None:
    proc = run_cli(*command, "--dsn", dsn, check=False)
    assert proc.returncode == 1, proc
    output = proc.stdout + proc.stderr
    assert "eventstore: error:" in output and "Traceback" not in output
    assert PW not in output and SSL_PW not in output


def _recorder(bin_dir: Path, tool: str, log: Path) -> None:
    """A `tool` first on PATH that records its argv and environment, then
    runs the real one."""
    real = shutil.which(tool)
    assert real is not None
    script = bin_dir / tool
    script.write_text(
        "#!/bin/sh\n"
        f'{{ printf "argv:"; printf " %s" "$0" "$@"; printf "\\n"; env | sed "s/^/env:/"; }}'
        f' >> "{log}"\n'
        f'exec "{real}" "$@"\n'
    )
    script.chmod(0o755)


def test_db_commands_put_no_secret_on_a_command_line(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sqitch", "psql"):
        _recorder(bin_dir, tool, log)
    name = unique_name("utcp_hostile_secret")
    dsn = dsn_for(name, password=PW, sslpassword=SSL_PW)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["EVENTSTORE_DSN"] = dsn  # not --dsn: the caller's own argv is the caller's business
    try:
        for command in (("db", "deploy"), ("db", "status"), ("db", "verify")):
            proc = run_cli(*command, env=env)
            assert PW not in proc.stdout + proc.stderr
            assert SSL_PW not in proc.stdout + proc.stderr
    finally:
        drop_database(name)
    lines = log.read_text().splitlines()
    argvs = [line for line in lines if line.startswith("argv:")]
    assert any("/sqitch" in a for a in argvs) and any("/psql" in a for a in argvs), argvs
    for argv in argvs:
        assert PW not in argv and SSL_PW not in argv, argv
    # They reached the children another way: the password in the environment,
    # sslpassword through a private service file (gone by now).
    assert f"env:PGPASSWORD={PW}" in lines
    service_files = {
        line.split("=", 1)[1] for line in lines if line.startswith("env:PGSERVICEFILE=")
    }
    assert service_files and not any(Path(f).exists() for f in service_files)
