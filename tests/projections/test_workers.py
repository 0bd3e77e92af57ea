"""Projection workers as an operator runs them: `eventstore project run`
processes, standby and take-over, LISTEN/NOTIFY wake-ups, SIGTERM, and a
poison event that stops the projection.

Each module gets its own database (the workers hold locks and a poison
event stops the projection for good), dropped at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from eventstore import EventStore, NewEvent, Settings
from projections.rebuild import rebuild
from projections.status import ProjectionStatus, projection_status
from tests.support.database import (
    WAIT,
    deployed_database,
    event_rows,
    one_value,
    run_cli,
    wait_until,
)
from tests.support.horizon import wait_for_horizon
from tests.support.trading_desk import DeskWriter, TradingDesk, start_worker, stop_worker
from trading import StorageAdapter, Trade
from trading.events import CashDeposited, PortfolioOpened


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=8)) as s:
        yield s


def status(store: EventStore) -> ProjectionStatus:
    return projection_status(store)


def worker_sessions(dsn: str) -> int:
    return int(
        one_value(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            ("eventstore-projection-trading",),
        )
    )


def assert_matches_log(store: EventStore, dsn: str, desk_trades: int, desk_cancelled: int) -> None:
    """The live projection, caught up, is the log: every event counted once,
    one trade row per trade, and a fresh rebuild finds no differing row."""
    final = status(store)
    assert final.last_error is None
    assert final.lag_events == 0
    assert final.events_processed == event_rows(dsn), "an event was missed or applied twice"
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades") == desk_trades
    cancelled = one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE status = 'cancelled'")
    assert cancelled == desk_cancelled
    report = rebuild(store, dsn, dry_run=True, lock_timeout=WAIT)
    assert report.live_error is None
    assert report.differences == [], report.differences
    assert not report.swapped


def test_standby_takes_over_when_the_active_worker_dies(store: EventStore, dsn: str) -> None:
    desk = TradingDesk(StorageAdapter(store), seed=1)
    writer = DeskWriter(desk)
    writer.start()
    first = start_worker(dsn, "--poll-interval", "0.2", "--batch-size", "25")
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: status(store).active_worker_pid is not None, "a worker to be active")
        first_pid = status(store).active_worker_pid
        wait_until(lambda: status(store).events_processed > 20, "the first worker to work")
        # The second one can only wait: its try-lock fails while the first lives.
        second = start_worker(dsn, "--poll-interval", "0.2", "--batch-size", "25")
        wait_until(lambda: worker_sessions(dsn) >= 3, "the second worker's standby session")
        assert status(store).active_worker_pid == first_pid

        first.kill()  # SIGKILL, mid-stream: no clean shutdown, its batch rolls back
        first.wait(timeout=WAIT)
        wait_until(
            lambda: status(store).active_worker_pid not in (None, first_pid),
            "the standby to take over",
        )
        second_pid = status(store).active_worker_pid
        processed = status(store).events_processed
        wait_until(lambda: status(store).events_processed > processed, "the new worker to work")

        # Its database session killed: it reconnects and takes the lock again.
        one_value(dsn, "SELECT pg_terminate_backend(%s)", (second_pid,))
        wait_until(
            lambda: status(store).active_worker_pid not in (None, first_pid, second_pid),
            "the worker to come back after losing its session",
        )
        assert second.poll() is None, "the worker exited instead of reconnecting"
        processed = status(store).events_processed
        wait_until(lambda: status(store).events_processed > processed, "the worker to work again")
    finally:
        writer.finish()
        if first.poll() is None:
            first.kill()
            first.wait()
    try:
        # Caught up with every committed event, also those a transaction
        # elsewhere in the cluster held back from readers for a moment.
        wait_until(
            lambda: (s := status(store)).lag_events == 0 and s.waiting_events == 0,
            "the worker to catch up",
        )
        # The live worker is still running: the dry-run rebuild pauses it.
        assert_matches_log(store, dsn, desk.executed, desk.cancelled)
    finally:
        code, err = stop_worker(second)
    assert code == 0, err
    assert "standby, a worker is active" in err
    assert "paused for a rebuild (standby)" in err  # it stepped back for the dry run


def test_a_notification_wakes_an_idle_worker(store: EventStore, dsn: str) -> None:
    adapter = StorageAdapter(store)
    desk = TradingDesk(adapter, portfolios=1, seed=2)
    # Polling alone would take a minute: only the notification can be this quick.
    proc = start_worker(dsn, "--poll-interval", "60")
    try:
        wait_until(
            lambda: (s := status(store)).active_worker_pid is not None and s.lag_events == 0,
            "the worker to be active and caught up",
        )
        for _ in range(2):
            before = status(store).events_processed
            desk.step()
            # Woken while a transaction elsewhere on the shared server hides
            # the event, the worker looks again every WAKE_SLICE for a poll
            # interval: the bound starts once the event is readable.
            wait_for_horizon(dsn, timeout=45.0)
            wait_until(
                lambda b=before: status(store).events_processed == b + 1,  # type: ignore[misc]
                "the notification to wake the worker",
                timeout=15.0,
            )
    finally:
        # Idle with a 60 s poll interval, it still stops soon after SIGTERM.
        code, err = stop_worker(proc, timeout=20.0)
    assert code == 0, err
    assert status(store).active_worker_pid is None


def test_sigterm_stops_after_the_current_batch(store: EventStore, dsn: str) -> None:
    desk = TradingDesk(StorageAdapter(store), seed=3)
    writer = DeskWriter(desk)
    writer.start()
    proc = start_worker(dsn, "--poll-interval", "0.1", "--batch-size", "5", "--verbose")
    try:
        start = status(store).events_processed
        wait_until(lambda: status(store).events_processed > start + 30, "the worker to work")
    finally:
        code, err = stop_worker(proc)
        stopped = status(store)
        writer.finish()
    assert code == 0, err
    assert err.rstrip().endswith("projection trading: stopped"), err
    assert stopped.active_worker_pid is None
    # Consistent: the tables hold exactly the events through the checkpoint,
    # each once, although the writers kept appending through the shutdown.
    assert stopped.events_processed == event_rows(dsn, through=stopped.checkpoint)
    trades_through = event_rows(dsn, through=stopped.checkpoint, type="TradeExecuted")
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades") == trades_through
    # And the next worker carries on from there.
    run_cli("project", "catch-up", "--dsn", dsn)
    trades = int(one_value(dsn, "SELECT count(*) FROM utcp.trades"))
    cancelled = int(one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE status = 'cancelled'"))
    assert trades == event_rows(dsn, type="TradeExecuted")
    assert_matches_log(store, dsn, trades, cancelled)


# -- a poison event -------------------------------------------------------------


@pytest.fixture(scope="module")
def poison_dsn() -> Iterator[str]:
    with deployed_database("utcp_poison") as d:
        yield d


def test_a_poison_event_stops_the_projection_before_it(poison_dsn: str) -> None:
    dsn = poison_dsn
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as store:
        adapter = StorageAdapter(store)
        now = dt.datetime.now(dt.UTC)
        adapter.open_portfolio(
            PortfolioOpened(portfolio_id="alpha", name="Alpha", base_currency="USD", opened_at=now)
        )
        adapter.deposit_cash(
            CashDeposited(
                deposit_id="d1", portfolio_id="alpha", amount=Decimal(1000), occurred_at=now
            )
        )
        adapter.save_trade(
            Trade(
                trade_id="t1",
                portfolio_id="alpha",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(2),
                price=Decimal("100.5"),
                fees=Decimal(1),
                executed_at=now,
            )
        )
        # A valid payload, in the right stream, for a portfolio never opened:
        # the store accepts it (it checks payloads, not the business story).
        poison = Trade(
            trade_id="t-ghost",
            portfolio_id="ghost",
            symbol="MSFT",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(10),
            executed_at=now,
        )
        store.append("portfolio-ghost", [NewEvent("TradeExecuted", poison)])
        adapter.deposit_cash(
            CashDeposited(
                deposit_id="d2", portfolio_id="alpha", amount=Decimal(500), occurred_at=now
            )
        )
        # Every event readable (a transaction elsewhere in the cluster can
        # hold the readers' horizon back for a while).
        wait_for_horizon(dsn)
        log = store.read_all(limit=100)
        assert len(log) == 5
    poison_event = next(e for e in log if e.stream_id == "portfolio-ghost")
    before = log[log.index(poison_event) - 1]

    for command in (("catch-up",), ("run", "--poll-interval", "0.2")):
        proc = run_cli("project", *command, "--dsn", dsn, check=False)
        assert proc.returncode == 1, proc
        # The command's own report: one line naming projection, event and cause.
        errors = [line for line in proc.stderr.splitlines() if line.startswith("eventstore: error")]
        assert len(errors) == 1, proc.stderr
        assert "projection 'trading'" in errors[0]
        assert str(poison_event.event_id) in errors[0]
        assert "portfolio 'ghost' was never opened" in errors[0]
        assert "Traceback" not in proc.stderr

    shown = run_cli("project", "status", "--json", "--dsn", dsn, check=False)
    assert shown.returncode == 1
    record = json.loads(shown.stdout)
    assert record["checkpoint"] == before.checkpoint  # just before the poison
    assert record["events_processed"] == log.index(poison_event)
    assert record["last_error_event"] == str(poison_event.event_id)
    assert "was never opened" in record["last_error"]
    assert record["lag_events"] == 2  # the poison and the deposit after it
    human = run_cli("project", "status", "--dsn", dsn, check=False)
    assert human.returncode == 1
    assert "last error:" in human.stdout and str(poison_event.event_id) in human.stdout

    # Everything before it applied, nothing after it.
    cash = one_value(dsn, "SELECT cash FROM utcp.portfolios WHERE portfolio_id = 'alpha'")
    assert cash == Decimal(1000) - (2 * Decimal("100.5") + 1)
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades") == 1

    # The way past it: an operator's decision, recorded in the log.
    event = str(poison_event.event_id)
    refused = run_cli("project", "skip", "not-an-id", "--reason", "x", "--dsn", dsn, check=False)
    assert refused.returncode == 1 and "not an event id" in refused.stderr
    unknown = str(uuid.uuid4())
    missing = run_cli("project", "skip", unknown, "--reason", "x", "--dsn", dsn, check=False)
    assert missing.returncode == 1 and f"no event {unknown}" in missing.stderr
    skip = ("project", "skip", event, "--reason", "booked to a portfolio never opened")
    decided = run_cli(*skip, "--actor", "ops-alice", "--dsn", dsn)
    assert f"passes over event {event}" in decided.stdout
    again = run_cli(*skip, "--dsn", dsn)
    assert "already decided by ops-alice: booked to a portfolio never opened" in again.stdout
    applied: list[int] = []

    def caught_up() -> bool:
        # Another session's open transaction (anywhere in the cluster) may
        # hold the decision back from readers for a moment: catch up again.
        out = run_cli("project", "catch-up", "--dsn", dsn).stdout
        applied.append(int(out.split()[2].replace(",", "")))
        shown = json.loads(run_cli("project", "status", "--json", "--dsn", dsn, check=False).stdout)
        return bool(shown["lag_events"] == 0 and shown["waiting_events"] == 0)

    wait_for_horizon(dsn)  # the decision is readable
    wait_until(caught_up, "the projection to pass over the poison event")
    assert sum(applied) == 3  # the poison (passed over), the deposit, the decision
    record = json.loads(run_cli("project", "status", "--json", "--dsn", dsn, check=False).stdout)
    assert record["last_error"] is None and record["lag_events"] == 0
    assert record["events_processed"] == len(log) + 1
    cash = one_value(dsn, "SELECT cash FROM utcp.portfolios WHERE portfolio_id = 'alpha'")
    assert cash == Decimal(1500) - (2 * Decimal("100.5") + 1)  # the deposit after it counted
    assert one_value(dsn, "SELECT count(*) FROM utcp.trades WHERE trade_id = 't-ghost'") == 0
    # A rebuild from scratch makes the same decision: nothing differs.
    assert run_cli("project", "rebuild", "--dry-run", "--dsn", dsn).returncode == 0
