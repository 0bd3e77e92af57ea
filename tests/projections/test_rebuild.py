"""`project rebuild` without downtime: shadow tables filled while writers
append, the live worker runs and readers read; a pause of the live worker;
a row-by-row comparison; an atomic swap readers never see half-done."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from eventstore import Checkpoint, EventStore, NewEvent, Settings, StoredEvent
from projections import ProjectionRunner
from projections import rebuild as rebuild_module
from projections.rebuild import RebuildError, RebuildReport, rebuild
from projections.sql import LIVE
from projections.status import projection_status
from tests.support.database import (
    WAIT,
    deployed_database,
    event_rows,
    one_value,
    run_cli,
    wait_until,
)
from tests.support.horizon import wait_for_horizon
from tests.support.reference_model import reference_model
from tests.support.trading_desk import DeskWriter, TradingDesk
from trading import StorageAdapter

from .test_replay_properties import assert_same, read_rows

LIVE_TABLES = ("trades", "positions", "portfolios")
CANONICAL_INDEXES = {
    "trades": {"trades_pkey", "trades_symbol_time", "trades_portfolio_time", "trades_time"},
    "positions": {"positions_pkey"},
    "portfolios": {"portfolios_pkey"},
}


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=8)) as s:
        yield s


@pytest.fixture(scope="module")
def desk(store: EventStore, dsn: str) -> TradingDesk:
    """A session already in the log and projected."""
    desk = TradingDesk(StorageAdapter(store), portfolios=4, seed=11)
    for _ in range(600):
        desk.step()
    wait_for_horizon(dsn)  # projected: all of it, not what a shared server let through
    run_cli("project", "catch-up", "--dsn", dsn)
    return desk


class Reader(threading.Thread):
    """Counts rows of the live tables in a loop, as a dashboard would; with
    ``hold``, each read keeps its transaction (and its table lock) open a
    while, so the swap has to wait for readers and readers queue behind it."""

    def __init__(self, dsn: str, hold: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.hold = hold
        self.stop = threading.Event()
        self.swapped = threading.Event()
        self.reads = 0
        self.reads_after_swap = 0
        self.empty: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                for table in LIVE_TABLES:
                    try:
                        with conn.transaction():
                            row = conn.execute(f"SELECT count(*) FROM utcp.{table}").fetchone()
                            if self.hold:
                                conn.execute("SELECT pg_sleep(%s)", (self.hold,))
                    except psycopg.Error as exc:
                        self.errors.append(f"{table}: {exc}")
                        continue
                    self.reads += 1
                    if self.swapped.is_set():
                        self.reads_after_swap += 1
                    if row is None or row[0] == 0:
                        self.empty.append(table)


PROJECTOR_PRIVILEGES = {
    "SELECT": True,
    "INSERT": True,
    "UPDATE": True,
    "DELETE": True,
    "TRUNCATE": False,
    "REFERENCES": False,
    "TRIGGER": False,
}


def assert_canonical_tables(dsn: str) -> None:
    """The swapped-in tables look like the Sqitch change made them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, expected in CANONICAL_INDEXES.items():
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'utcp' AND tablename = %s",
                    (table,),
                )
            }
            assert names == expected, table
            # Owned by the schema's owner; the projector has its DML, nothing more.
            owner = conn.execute(
                "SELECT t.tableowner = pg_get_userbyid(n.nspowner) FROM pg_tables t "
                "JOIN pg_namespace n ON n.nspname = t.schemaname "
                "WHERE t.schemaname = 'utcp' AND t.tablename = %s",
                (table,),
            ).fetchone()
            assert owner == (True,), table
            for privilege, expected_grant in PROJECTOR_PRIVILEGES.items():
                held = conn.execute(
                    "SELECT has_table_privilege('utcp_projector', %s, %s)",
                    (f"utcp.{table}", privilege),
                ).fetchone()
                assert held == (expected_grant,), (table, privilege)
            for role in ("utcp_reader", "utcp_writer"):
                granted = conn.execute(
                    "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, f"utcp.{table}")
                ).fetchone()
                assert granted == (True,), (role, table)
        leftovers = conn.execute(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = 'utcp' AND tablename LIKE '%\\_\\_%'"
        ).fetchall()
        assert leftovers == []
        rows = conn.execute(
            "SELECT projection FROM utcp.projection_checkpoints ORDER BY 1"
        ).fetchall()
        assert rows == [("trading",)]
    run_cli("db", "verify", "--dsn", dsn)


def no_differences(report: RebuildReport) -> None:
    assert report.live_error is None
    assert report.differences == [], "\n".join(map(repr, report.differences))


def test_rebuild_while_writers_append_and_readers_read(
    store: EventStore, dsn: str, desk: TradingDesk
) -> None:
    stop_worker = threading.Event()
    worker_errors: list[BaseException] = []

    def live_worker() -> None:
        try:
            ProjectionRunner(store, dsn, poll_interval=0.2, batch_size=50).run(stop_worker)
        except BaseException as exc:
            worker_errors.append(exc)

    worker = threading.Thread(target=live_worker, daemon=True)
    worker.start()
    writers = [DeskWriter(desk)] + [
        DeskWriter(TradingDesk(StorageAdapter(store), seed=s)) for s in (12,)
    ]
    readers = [Reader(dsn), Reader(dsn), Reader(dsn, hold=0.05)]
    for thread in (*writers, *readers):
        thread.start()
    phases: list[str] = []
    try:
        wait_until(lambda: all(r.reads > 10 for r in readers), "the readers to read")
        report = rebuild(
            store,
            dsn,
            batch_size=100,
            lock_timeout=WAIT,
            progress=lambda phase, done, total: phases.append(phase),
        )
        for reader in readers:
            reader.swapped.set()
        wait_until(lambda: all(r.reads_after_swap > 10 for r in readers), "reads after the swap")
        time.sleep(0.2)  # writers keep going after the swap, the worker follows
    finally:
        for writer in writers:
            writer.finish()
        for reader in readers:
            reader.stop.set()
            reader.join(timeout=WAIT)
    try:
        wait_for_horizon(dsn)  # the writers' last events are readable
        wait_until(lambda: projection_status(store).lag_events == 0, "the worker to catch up")
    finally:
        stop_worker.set()
        worker.join(timeout=WAIT)
    assert worker_errors == []

    assert report.swapped
    assert report.events > 600
    assert phases[0] == "rebuild" and phases[-1] == "swap"
    no_differences(report)  # the live worker had it right, at the same checkpoint
    for reader in readers:
        assert reader.errors == [], reader.errors[:3]
        assert reader.empty == [], "a reader saw an empty table"

    # After the swap, and everything appended since: what a rebuild from
    # scratch gives, every event counted once, as many trade rows as trades.
    status = projection_status(store)
    assert status.last_error is None
    assert status.events_processed == one_value(dsn, "SELECT count(*) FROM utcp.stored_events")
    executed = sum(w.desk.executed for w in writers)
    cancelled = sum(w.desk.cancelled for w in writers)
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades") == executed
    assert (
        one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE status = 'cancelled'") == cancelled
    )
    portfolios = sum(len(w.desk.portfolios) for w in writers)
    assert one_value(dsn, "SELECT count(*) FROM utcp.portfolios") == portfolios
    again = rebuild(store, dsn, dry_run=True)
    no_differences(again)
    assert not again.swapped
    assert_canonical_tables(dsn)
    assert_equals_reference_model(store, dsn)


def assert_equals_reference_model(store: EventStore, dsn: str) -> None:
    """The live tables are, row for row, what the plain-Python model of the
    rules derives from the log up to the projection's checkpoint."""
    through = Checkpoint.parse(projection_status(store).checkpoint)
    events: list[StoredEvent] = []
    after = None
    while page := store.read_all(after=after, limit=1000):
        events.extend(e for e in page if Checkpoint.parse(e.checkpoint) <= through)
        after = page[-1].checkpoint
    with psycopg.connect(dsn, autocommit=True) as conn:
        live = read_rows(conn, LIVE)
    assert len(live[0]) > 600
    assert_same(live, reference_model(events), "live tables after the swap", "reference model")


def position_row(dsn: str, key: tuple[str, str]) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        row = cur.execute(
            "SELECT * FROM utcp.positions WHERE portfolio_id = %s AND symbol = %s", key
        ).fetchone()
    assert row is not None
    return row


def test_a_corrupted_live_row_is_reported_and_repaired(
    store: EventStore, dsn: str, desk: TradingDesk
) -> None:
    run_cli("project", "catch-up", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:  # the superuser
        key = admin.execute(
            "SELECT portfolio_id, symbol FROM utcp.positions ORDER BY 1, 2 LIMIT 1"
        ).fetchone()
        assert key is not None
        admin.execute(
            "UPDATE utcp.positions SET quantity = quantity + 1 "
            "WHERE portfolio_id = %s AND symbol = %s",
            key,
        )
        admin.execute(
            "INSERT INTO utcp.trades SELECT 'forged', portfolio_id, symbol, side, quantity, "
            "price, fees, executed_at, order_id, status, event_position, updated_at "
            "FROM utcp.trades LIMIT 1"
        )
    corrupted = position_row(dsn, key)

    dry = rebuild(store, dsn, dry_run=True)
    assert not dry.swapped
    assert [(d.table, d.key) for d in dry.differences] == [
        ("trades", {"trade_id": "forged"}),
        ("positions", {"portfolio_id": key[0], "symbol": key[1]}),
    ]
    forged, position = dry.differences
    assert forged.rebuilt is None and forged.live is not None
    assert position.columns() == ["quantity"]
    assert position.live is not None and position.rebuilt is not None
    assert position.live["quantity"] == position.rebuilt["quantity"] + 1
    # A dry run changes nothing and leaves nothing behind.
    assert position_row(dsn, key) == corrupted
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id = 'forged'") == 1
    assert one_value(dsn, "SELECT count(*) FROM utcp.projection_checkpoints") == 1
    assert one_value(dsn, "SELECT to_regclass('utcp.positions__rebuild') IS NULL") is True

    real = rebuild(store, dsn)
    assert real.swapped
    assert [(d.table, d.key) for d in real.differences] == [
        (d.table, d.key) for d in dry.differences
    ]
    repaired = position_row(dsn, key)
    assert repaired["quantity"] == corrupted["quantity"] - 1 == position.rebuilt["quantity"]
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id = 'forged'") == 0
    assert isinstance(repaired["quantity"], Decimal)
    no_differences(rebuild(store, dsn, dry_run=True))
    assert_canonical_tables(dsn)


def test_a_rebuild_is_the_way_out_for_a_checkpoint_beyond_the_log(
    store: EventStore, dsn: str, desk: TradingDesk
) -> None:
    """After a restore to a point before the live projection's checkpoint,
    catching up fails loudly (CheckpointNotInLog); a rebuild reads the log
    as it is, swaps the rebuilt tables in and leaves a checkpoint that is in
    the log, so the worker goes on."""
    run_cli("project", "catch-up", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:  # what a restore leaves behind
        admin.execute(
            "UPDATE utcp.projection_checkpoints"
            "   SET checkpoint_tx = (checkpoint_tx::text::bigint + 1000000)::text::xid8,"
            "       checkpoint_position = checkpoint_position + 1000000"
            " WHERE projection = 'trading'"
        )
    status = projection_status(store)
    lost = status.checkpoint
    assert not status.checkpoint_in_log
    shown = run_cli("project", "status", "--dsn", dsn, check=False)
    assert shown.returncode == 1 and "names no event in this log" in shown.stdout
    caught = run_cli("project", "catch-up", "--dsn", dsn, check=False)
    assert caught.returncode == 1 and "project rebuild" in caught.stderr, caught.stderr

    report = rebuild(store, dsn)
    assert report.swapped and report.live_error is not None
    assert lost in report.live_error and "names no event in this log" in report.live_error
    assert report.checkpoint != lost
    assert store.read_all(after=report.checkpoint, limit=1) is not None  # in the log
    desk.step()
    run_cli("project", "catch-up", "--dsn", dsn)
    no_differences(rebuild(store, dsn, dry_run=True))
    assert projection_status(store).checkpoint_in_log


def test_a_rebuild_that_cannot_go_on_leaves_nothing_behind(
    store: EventStore, dsn: str, desk: TradingDesk
) -> None:
    # A holder of the live lock that never steps back (not a `project run`).
    holder = ProjectionRunner(store, dsn)
    assert holder.acquire()
    try:
        with pytest.raises(RebuildError, match=r"did not pause within 0.5 s; nothing was swapped"):
            rebuild(store, dsn, lock_timeout=0.5)
    finally:
        holder.release()
    # Another rebuild in progress (it holds the rebuild's lock): refused at once.
    other = ProjectionRunner(store, dsn, checkpoint_name="trading__rebuild")
    assert other.acquire()
    try:
        pid = other.connection.info.backend_pid
        with pytest.raises(RebuildError, match=rf"another rebuild is running \(pid {pid}, "):
            rebuild(store, dsn)
    finally:
        other.release()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM utcp.projection_checkpoints WHERE projection = 'trading__rebuild'"
        )
    assert_canonical_tables(dsn)  # no shadow tables left, the live ones untouched


def test_a_rebuild_ends_while_writers_outpace_it() -> None:
    """Writers that append more than the rebuild reads, batch after batch,
    cannot keep it chasing the head: each pass ends at the head as it was
    when the pass began, and the rest is applied under the lock."""
    batch = 10
    with (
        deployed_database("utcp_rebuild_chase") as dsn,
        EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as store,
    ):
        desk = TradingDesk(StorageAdapter(store), portfolios=2, seed=5)
        for _ in range(100):
            desk.step()
        wait_for_horizon(dsn)  # the rebuild must see these to be outpaced at all
        reads = 0

        def outpace(phase: str, done: int, total: int) -> None:
            nonlocal reads
            if phase != "rebuild" or done == 0:
                return
            reads += 1
            assert reads < 1000, "the rebuild kept chasing the head"
            noise = [NewEvent("DeskNote", {"n": i}) for i in range(batch + 1)]
            store.append("desk-notes", noise)

        report = rebuild(store, dsn, batch_size=batch, progress=outpace, lock_timeout=WAIT)
        assert report.swapped
        no_differences(report)
        # Swapped in at the checkpoint the rebuild reached, every event
        # up to it counted once (the chase's own noise included).
        status = projection_status(store)
        assert status.checkpoint == report.checkpoint
        assert status.events_processed == event_rows(dsn, through=report.checkpoint)
        assert status.events_processed > 100 + 3 * batch
        assert one_value(dsn, "SELECT count(*) FROM utcp.trades") == desk.executed


def test_a_swap_that_cannot_lock_never_holds_readers_back_for_long(
    store: EventStore, dsn: str, desk: TradingDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that keeps its transaction open stops the swap, but the
    swap's queued lock holds other readers back only for short tries."""
    monkeypatch.setattr(rebuild_module, "SWAP_WAIT", 2.0)
    run_cli("project", "catch-up", "--dsn", dsn)
    waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM utcp.trades").fetchone()
                waits.append(time.monotonic() - started)
                time.sleep(0.01)

    # A transaction left open on positions; the probe reads trades, which
    # the swap has locked by the time it waits for positions.
    with psycopg.connect(dsn) as long_reader:
        long_reader.execute("SELECT count(*) FROM utcp.positions").fetchone()
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        try:
            with pytest.raises(RebuildError, match=r"could not lock the tables within 2 s"):
                rebuild(store, dsn)
        finally:
            stop.set()
            prober.join(timeout=WAIT)
        long_reader.rollback()
    assert len(waits) > 20
    assert max(waits) < 1.0, f"a reader waited {max(waits):.2f} s behind the swap"
    assert_canonical_tables(dsn)
    no_differences(rebuild(store, dsn, dry_run=True))
