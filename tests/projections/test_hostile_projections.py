"""Hostile roles against the projections (issue 6).

Each attacker is a fresh login role (conftest.login_role), on plain
psycopg connections: the projector escalating through what it owned or
could create in schema utcp, any role holding the projection's exclusion
(advisory locks, formerly), forged skip decisions, a thousand skip
decisions in one batch, and readers that keep a rebuild's DDL waiting.
Every attack is refused or has no effect, and the legitimate use (the CLI
as a projector-only login) still works.

One database for the module: the attacks stop and skip projections.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from eventstore import EventStore, NewEvent, Settings
from projections import rebuild as rebuild_module
from projections.rebuild import RebuildError, rebuild
from projections.runner import ProjectionRunner
from projections.status import projection_status
from tests.support.database import (
    WAIT,
    login_role,
    one_value,
    run_cli,
    wait_until,
)
from tests.support.horizon import wait_for_horizon
from trading import StorageAdapter, Trade
from trading.events import CashDeposited, PortfolioOpened, ProjectionEventSkipped

#: The advisory-lock keys of the code before the lease: class "UTCP".
OLD_LOCK_CLASS = 0x55544350 & 0x7FFFFFFF
RUN = (sys.executable, "-m", "storectl", "project", "run", "--poll-interval", "0.2")


@pytest.fixture(scope="module")
def projector_dsn(dsn: str) -> Iterator[str]:
    """A projector-only login with a schema of its own (a sandbox)."""
    with login_role(dsn, "utcp_projector", own_schema=True) as d:
        yield d


@pytest.fixture(scope="module")
def writer_dsn(dsn: str) -> Iterator[str]:
    with login_role(dsn, "utcp_writer", own_schema=True) as d:
        yield d


@pytest.fixture(scope="module")
def operator_dsn(dsn: str) -> Iterator[str]:
    """An operator, for the module: its decisions count while its role exists."""
    with login_role(dsn, "utcp_operator") as d:
        yield d


@pytest.fixture(scope="module")
def store(writer_dsn: str) -> Iterator[EventStore]:
    with EventStore.open(writer_dsn, Settings(pool_min_size=1, pool_max_size=4)) as s:
        yield s


def open_portfolio(store: EventStore, pid: str) -> None:
    adapter = StorageAdapter(store)
    now = dt.datetime.now(dt.UTC)
    adapter.open_portfolio(
        PortfolioOpened(portfolio_id=pid, name=pid, base_currency="USD", opened_at=now)
    )
    adapter.deposit_cash(
        CashDeposited(
            deposit_id=f"{pid}-d", portfolio_id=pid, amount=Decimal(10_000), occurred_at=now
        )
    )
    adapter.save_trade(
        Trade(
            trade_id=f"{pid}-t",
            portfolio_id=pid,
            symbol="AAPL",
            side="buy",
            quantity=Decimal(2),
            price=Decimal("100.5"),
            fees=Decimal(1),
            executed_at=now,
        )
    )


def ghost_trades(store: EventStore, count: int) -> list[str]:
    """``count`` trades for a portfolio never opened (the projection refuses
    each); their event ids."""
    ghost = f"ghost{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)
    ids: list[str] = []
    for start in range(0, count, 500):
        batch = [
            NewEvent(
                "TradeExecuted",
                event_id=uuid.uuid4(),
                data=Trade(
                    trade_id=f"{ghost}-{i}",
                    portfolio_id=ghost,
                    symbol="MSFT",
                    side="buy",
                    quantity=Decimal(1),
                    price=Decimal(10),
                    executed_at=now,
                ),
            )
            for i in range(start, min(count, start + 500))
        ]
        result = store.append(f"portfolio-{ghost}", batch)
        ids.extend(str(e.event_id) for e in batch)
        assert result is not None
    return ids


def status_json(dsn: str) -> dict[str, Any]:
    proc = run_cli("project", "status", "--json", "--dsn", dsn, check=False)
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


def catch_up_until_idle(dsn: str, *extra: str) -> None:
    """Catch up until nothing is waiting (a transaction elsewhere in the
    cluster may hold the newest events back from readers for a moment)."""

    def idle() -> bool:
        run_cli("project", "catch-up", *extra, "--dsn", dsn)
        shown = status_json(dsn)
        return bool(shown["lag_events"] == 0 and shown["waiting_events"] == 0)

    wait_for_horizon(dsn)  # every committed event is readable
    wait_until(idle, "the projection to catch up")


# -- the projector owns and creates nothing in utcp ---------------------------------


ATTACKS = {
    "an append_events overload that psycopg's types would prefer": (
        "CREATE FUNCTION utcp.append_events(p_stream_id text, p_expected int2, p_key text, "
        "p_fingerprint bytea, p_request_id uuid, p_events jsonb) RETURNS void "
        "LANGUAGE plpgsql AS 'BEGIN END'"
    ),
    "a function of its own in utcp": (
        "CREATE FUNCTION utcp.sha256(bytea) RETURNS bytea LANGUAGE sql AS 'SELECT $1'"
    ),
    "a trigger on the trades it projects": (
        "CREATE TRIGGER hijack BEFORE INSERT ON utcp.trades "
        "FOR EACH ROW EXECUTE FUNCTION {schema}.hijack()"
    ),
    "a table in utcp": "CREATE TABLE utcp.trades__mine (x int)",
    "a view in place of utcp.positions": "DROP TABLE utcp.positions",
    "a view next to it": "CREATE VIEW utcp.positions_v AS SELECT 1 AS x",
    "the trades table renamed away": "ALTER TABLE utcp.trades RENAME TO trades_gone",
    "the checkpoints given to itself": ("ALTER TABLE utcp.projection_checkpoints OWNER TO {role}"),
    "a foreign key pinning the trades": (
        "CREATE TABLE {schema}.pin (t text REFERENCES utcp.trades (trade_id))"
    ),
    "the worker lease rewritten by DDL": "ALTER TABLE utcp.projection_leases DISABLE TRIGGER ALL",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_projector_cannot_create_in_or_own_anything_in_utcp(
    projector_dsn: str, attack: str
) -> None:
    with psycopg.connect(projector_dsn, autocommit=True) as conn:
        role = conn.info.user
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}.hijack() RETURNS trigger LANGUAGE plpgsql "
                "AS 'BEGIN RETURN NEW; END'"
            ).format(sql.Identifier(role))
        )
        statement = ATTACKS[attack].format(schema=f'"{role}"', role=f'"{role}"')
        # (Rolled back, so that an attack that works does no lasting harm.)
        with (
            conn.transaction(force_rollback=True),
            pytest.raises(pg_errors.InsufficientPrivilege),
        ):
            conn.execute(statement.encode())
        # What it keeps: the DML a worker needs, on the projection tables.
        with conn.transaction(force_rollback=True):
            conn.execute("DELETE FROM utcp.trades WHERE false")
            conn.execute("SELECT count(*) FROM utcp.positions").fetchone()


def test_the_rebuild_functions_take_only_the_fixed_tables(
    projector_dsn: str, writer_dsn: str
) -> None:
    with psycopg.connect(projector_dsn, autocommit=True) as conn:
        for suffix in ("x; DROP TABLE utcp.trades", "old", "", "Rebuild", "a" * 33, "x__y"):
            with pytest.raises(pg_errors.InvalidParameterValue):
                conn.execute("SELECT utcp.rebuild_prepare(%s::text)", (suffix,))
        with pytest.raises(pg_errors.InvalidParameterValue):
            conn.execute("SELECT utcp.rebuild_discard(%s::text)", ("../stored_events",))
        # A swap by a session that does not hold the live projection's lease.
        with pytest.raises(pg_errors.ObjectNotInPrerequisiteState, match="lease"):
            conn.execute("SELECT utcp.rebuild_swap('rebuild', 'trading', 'trading__rebuild')")
    with psycopg.connect(writer_dsn, autocommit=True) as conn:
        for call in (
            "SELECT utcp.rebuild_prepare('rebuild')",
            "SELECT utcp.rebuild_discard('rebuild')",
            "SELECT utcp.rebuild_swap('rebuild', 'trading', 'trading__rebuild')",
        ):
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute(call)


def test_a_projector_only_login_runs_catch_up_run_and_rebuild(
    dsn: str, projector_dsn: str, store: EventStore
) -> None:
    open_portfolio(store, f"p{uuid.uuid4().hex[:6]}")
    catch_up_until_idle(projector_dsn)
    worker = subprocess.Popen(
        [*RUN, "--dsn", projector_dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: status_json(dsn)["active_worker_pid"] is not None, "the worker")
        pid = f"p{uuid.uuid4().hex[:6]}"
        open_portfolio(store, pid)
        wait_until(
            lambda: (
                one_value(
                    dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id = %s", (f"{pid}-t",)
                )
                == 1
            ),
            "the worker to project the new trade",
        )
        # The rebuild pauses the worker (it hands its lease over) and swaps.
        proc = run_cli("project", "rebuild", "--dsn", projector_dsn)
        assert "no differences" in proc.stdout, proc.stdout
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=WAIT)
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    owner = one_value(
        dsn,
        "SELECT c.relowner = n.nspowner FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'utcp' AND c.relname = 'trades'",
    )
    assert owner is True  # the swapped-in table too belongs to the schema's owner


def test_a_view_of_its_own_on_a_projection_table_cannot_stop_a_rebuild(
    dsn: str, projector_dsn: str, store: EventStore
) -> None:
    """A reader's view on utcp.trades depends on the live table, which the
    swap drops once it is renamed away: the view goes with it (it would
    show the old rows), the rebuild is not held off."""
    with (
        login_role(dsn, "utcp_reader", own_schema=True) as reader_dsn,
        psycopg.connect(reader_dsn, autocommit=True) as reader,
    ):
        schema = sql.Identifier(reader.info.user)
        reader.execute(sql.SQL("CREATE VIEW {}.pinned AS SELECT * FROM utcp.trades").format(schema))
        proc = run_cli("project", "rebuild", "--dsn", projector_dsn, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "no differences" in proc.stdout
        gone = reader.execute(
            "SELECT to_regclass(%s)", (f'"{reader.info.user}".pinned',)
        ).fetchone()
        assert gone == (None,)


# -- nobody else can hold the projection's exclusion ---------------------------------


Key = tuple[int, int, int]  # pg_locks classid, objid, objsubid


def keys_in_use(conn: psycopg.Connection[Any]) -> list[Key]:
    """Every advisory key another session holds now (pg_locks is visible to
    every role)."""
    rows = conn.execute(
        "SELECT classid::bigint, objid::bigint, objsubid FROM pg_locks "
        "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
    ).fetchall()
    return [(int(c), int(o), int(s)) for c, o, s in rows]


def take_keys(conn: psycopg.Connection[Any], keys: list[Key]) -> None:
    """Try to take each key (and keep it: session-level)."""

    def signed(value: int) -> int:
        return value - (1 << 32) if value >= 1 << 31 else value

    for classid, objid, subid in keys:
        if subid == 1:
            conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", ((classid << 32) | objid,))
        else:
            conn.execute(
                "SELECT pg_try_advisory_lock(%s::int, %s::int)", (signed(classid), signed(objid))
            )


def held_keys(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


def stop_after(seconds: float) -> threading.Event:
    """A stop flag that sets itself after ``seconds`` (a bounded standby)."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


@pytest.mark.parametrize("group", ["utcp_reader", "utcp_writer"])
def test_no_other_role_can_hold_the_workers_off(
    dsn: str, projector_dsn: str, store: EventStore, group: str
) -> None:
    with (
        login_role(dsn, group, own_schema=True) as attacker_dsn,
        psycopg.connect(attacker_dsn, autocommit=True) as attacker,
    ):
        # The fixed keys of the advisory-lock design, for the worker and the
        # rebuild, taken first and held.
        for name in ("trading", "trading__rebuild"):
            attacker.execute(
                "SELECT pg_advisory_lock(%s, hashtext(%s))", (OLD_LOCK_CLASS, name)
            ).fetchone()
        worker = ProjectionRunner(store, projector_dsn)
        assert worker.acquire(stop_after(10), standby=0.1), "the projector is held off"
        # Whatever keys the worker's session holds: seen, tried, and taken
        # for good once the worker lets go of them.
        seen = keys_in_use(attacker)
        take_keys(attacker, seen)
        # (b) The lease itself is the projector's: no reading, no writing.
        for statement in (
            "SELECT * FROM utcp.projection_leases",
            "UPDATE utcp.projection_leases SET holder_pid = pg_backend_pid()",
            "INSERT INTO utcp.projection_leases (projection) VALUES ('x')",
            "DELETE FROM utcp.projection_leases",
        ):
            with pytest.raises(pg_errors.InsufficientPrivilege):
                attacker.execute(statement.encode())
        worker.release()
        take_keys(attacker, seen)
        assert held_keys(attacker) >= 2
        # (a) Holding every key it could: catch-up, rebuild and run still run.
        open_portfolio(store, f"p{uuid.uuid4().hex[:6]}")
        catch_up_until_idle(projector_dsn)
        proc = run_cli("project", "rebuild", "--dsn", projector_dsn)
        assert "no differences" in proc.stdout, proc.stdout
        running = subprocess.Popen(
            [*RUN, "--dsn", projector_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: projection_status(store).active_worker_pid is not None, "the worker")
            pid = f"p{uuid.uuid4().hex[:6]}"
            open_portfolio(store, pid)
            wait_until(
                lambda: (
                    one_value(
                        dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id = %s", (f"{pid}-t",)
                    )
                    == 1
                ),
                "the worker to project past the attacker",
            )
            # And status, as the attacker sees it, names the worker.
            shown = status_json(attacker_dsn)
            assert shown["active_worker_pid"] not in (None, attacker.info.backend_pid)
        finally:
            running.terminate()
            running.communicate(timeout=WAIT)
        assert running.returncode == 0


def test_a_session_that_gets_a_dead_holders_pid_cannot_pass_for_it(
    dsn: str, projector_dsn: str, store: EventStore
) -> None:
    """A holder died; an attacker's session got its pid and took the
    advisory lock on its nonce (seen in pg_locks before): the lease is
    still free, because that backend did not start when the holder did."""
    nonce = 0x7A11_0000_0001
    with (
        login_role(dsn, "utcp_reader") as attacker_dsn,
        psycopg.connect(attacker_dsn, autocommit=True) as attacker,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        attacker.execute("SELECT pg_advisory_lock(%s::bigint)", (nonce,)).fetchone()
        # The lease as the dead holder left it, but for the attacker's pid
        # (the superuser writes what only a recycled pid could make true).
        admin.execute(
            "INSERT INTO utcp.projection_leases (projection) VALUES ('trading') "
            "ON CONFLICT DO NOTHING"
        )
        admin.execute(
            "UPDATE utcp.projection_leases SET holder_pid = %s, holder_nonce = %s, "
            "holder_started = (SELECT backend_start - interval '1 minute' "
            "FROM pg_stat_activity WHERE pid = %s) WHERE projection = 'trading'",
            (attacker.info.backend_pid, nonce, attacker.info.backend_pid),
        )
        assert projection_status(store).active_worker_pid is None
        worker = ProjectionRunner(store, projector_dsn)
        assert worker.acquire(stop_after(10), standby=0.1), "the attacker holds the lease"
        worker.release()


# -- skip decisions only from operators ----------------------------------------------


def forge_decision(dsn: str, event_id: str, recorded_by: str | None, actor: str) -> None:
    """A ProjectionEventSkipped in stream projection-trading, inserted by a
    superuser with ``recorded_by`` set as if another role had appended it
    (independent of what utcp.append_events lets a writer do)."""
    data = json.dumps(
        {
            "projection": "trading",
            "event_id": event_id,
            "reason": "approved by the head of operations",
            "actor": actor,
            "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
        }
    )
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("LOCK TABLE utcp.stored_events IN SHARE ROW EXCLUSIVE MODE")
        head = conn.execute(
            "SELECT stream_version, hash FROM utcp.stored_events "
            "WHERE stream_id = 'projection-trading' ORDER BY stream_version DESC LIMIT 1"
        ).fetchone()
        version, prev = (1, None) if head is None else (head[0] + 1, head[1])
        conn.execute(
            "INSERT INTO utcp.stored_events (event_id, stream_id, stream_version, type, data, "
            "occurred_at, created_at, prev_hash, hash, hash_version, recorded_by) "
            "SELECT id, 'projection-trading', %(v)s, %(type)s, %(data)s::jsonb, now(), now(), "
            "%(prev)s, utcp.event_hash_v2(%(prev)s, id, 'projection-trading', %(v)s, %(type)s, "
            "%(data)s::jsonb, NULL, NULL, now(), now(), %(by)s), 2, %(by)s "
            "FROM (SELECT gen_random_uuid() AS id) i",
            {
                "v": version,
                "type": ProjectionEventSkipped.EVENT_TYPE,
                "data": data,
                "prev": prev,
                "by": recorded_by,
            },
        )


def stopped_at(dsn: str) -> str | None:
    """The event the projection is stopped before, after a catch-up."""
    run_cli("project", "catch-up", "--dsn", dsn, check=False)
    shown = status_json(dsn)
    return None if shown["last_error_event"] is None else str(shown["last_error_event"])


def test_a_forged_skip_decision_does_not_pass_over_a_refused_event(
    dsn: str, projector_dsn: str, writer_dsn: str, operator_dsn: str, store: EventStore
) -> None:
    catch_up_until_idle(projector_dsn)
    (poison,) = ghost_trades(store, 1)
    wait_until(lambda: stopped_at(projector_dsn) == poison, "the projection to stop")
    writer_role = psycopg.conninfo.conninfo_to_dict(writer_dsn)["user"]
    assert isinstance(writer_role, str)
    # "By the head of operations", recorded by a writer; by a role dropped
    # since; and with no role at all (as before roles were recorded).
    forge_decision(dsn, poison, writer_role, "head of operations")
    forge_decision(dsn, poison, f"utcp_t_gone_{uuid.uuid4().hex[:8]}", "head of operations")
    forge_decision(dsn, poison, None, "head of operations")
    for _ in range(3):
        assert stopped_at(projector_dsn) == poison
    # The writer itself, through the CLI: not honoured either (whether or
    # not the database lets it append the decision at all).
    run_cli(
        "project",
        "skip",
        poison,
        "--reason",
        "trust me",
        "--actor",
        "cfo",
        "--dsn",
        writer_dsn,
        check=False,
    )
    assert stopped_at(projector_dsn) == poison
    # An operator's decision is honoured.
    run_cli("project", "skip", poison, "--reason", "booked in error", "--dsn", operator_dsn)
    wait_until(lambda: stopped_at(projector_dsn) is None, "the operator's decision")
    catch_up_until_idle(projector_dsn)
    assert status_json(dsn)["last_error"] is None


# -- a thousand skip decisions in one batch ---------------------------------------------


def test_a_thousand_skip_decisions_in_one_batch(
    dsn: str, projector_dsn: str, operator_dsn: str, store: EventStore
) -> None:
    catch_up_until_idle(projector_dsn)
    count = 1_100
    refused = ghost_trades(store, count)
    with EventStore.open(operator_dsn, Settings(pool_min_size=1, pool_max_size=1)) as operator:
        now = dt.datetime.now(dt.UTC)
        for start in range(0, count, 500):
            operator.append(
                "projection-trading",
                [
                    NewEvent(
                        ProjectionEventSkipped.EVENT_TYPE,
                        ProjectionEventSkipped(
                            projection="trading",
                            event_id=uuid.UUID(event_id),
                            reason="a ghost portfolio",
                            actor="ops",
                            occurred_at=now,
                        ),
                    )
                    for event_id in refused[start : start + 500]
                ],
            )
        # All of them, and their decisions, in one batch: no RecursionError.
        batch = ("--batch-size", str(4 * count))
        wait_until(
            lambda: (
                (shown := status_json(dsn))["lag_events"] >= 2 * count
                and shown["waiting_events"] == 0
            ),
            "every refused event and decision to be readable",
        )
        catch_up_until_idle(projector_dsn, *batch)
        shown = status_json(dsn)
        assert shown["last_error"] is None and shown["lag_events"] == 0
        assert one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id LIKE 'ghost%'") == 0
        # A rebuild makes the same decisions, in one batch too.
        proc = run_cli("project", "rebuild", *batch, "--dsn", projector_dsn, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "no differences" in proc.stdout


# -- bounded waits that name the blocker ---------------------------------------------


def test_a_reader_holding_a_projection_table_is_named_by_the_rebuild(
    dsn: str, projector_dsn: str, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild_module, "SWAP_WAIT", 1.0)
    catch_up_until_idle(projector_dsn)
    with (
        login_role(dsn, "utcp_reader") as reader_dsn,
        psycopg.connect(reader_dsn, application_name="hostile-reader") as reader,
    ):
        reader.execute("LOCK TABLE utcp.trades IN ACCESS SHARE MODE")  # left open
        role = reader.info.user
        with (
            EventStore.open(projector_dsn, Settings(pool_min_size=1, pool_max_size=2)) as s,
            pytest.raises(RebuildError) as caught,
        ):
            rebuild(s, projector_dsn, lock_timeout=WAIT)
        message = str(caught.value)
        assert "the swap could not lock the tables within 1 s" in message
        assert f"pid {reader.info.backend_pid} (role {role}" in message
        assert "application 'hostile-reader'" in message
        assert "idle in transaction" in message and "transaction open" in message
        assert "holds AccessShareLock" in message
        reader.rollback()
    # Nothing swapped, nothing left behind: the next rebuild goes through.
    proc = run_cli("project", "rebuild", "--dsn", projector_dsn)
    assert "no differences" in proc.stdout


def test_catch_up_names_the_session_holding_the_lease(
    dsn: str, projector_dsn: str, store: EventStore
) -> None:
    holder = ProjectionRunner(store, projector_dsn)
    assert holder.acquire()
    try:
        busy = run_cli("project", "catch-up", "--dsn", projector_dsn, check=False)
        assert busy.returncode == 1 and "Traceback" not in busy.stderr
        pid = holder.connection.info.backend_pid
        role = holder.connection.info.user
        assert f"a worker is active (pid {pid}, role {role}, " in busy.stderr
        assert "application 'eventstore-projection-trading'" in busy.stderr
        assert "holding it for" in busy.stderr
    finally:
        holder.release()
