"""The worked example of docs/trading-rules.md, number for number.

The events of the example are appended through StorageAdapter into a
throwaway database and projected with ProjectionRunner after every step;
the rows of utcp.positions, utcp.portfolios and utcp.trades are compared,
exactly as Decimals, with the table read from the doc itself (so the doc
and the code cannot drift apart).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.rows import dict_row

from eventstore import AppendResult, EventStore, Settings
from projections.models import plain_decimal
from projections.queries import get_portfolio, get_positions
from projections.runner import ProjectionRunner
from tests.support.horizon import wait_for_horizon
from trading import AuditEvent, StorageAdapter, Trade
from trading.events import CashDeposited, CashWithdrawn, PortfolioOpened, TradeCancelled

DOC = Path(__file__).resolve().parents[2] / "docs" / "trading-rules.md"
PID = "demo"
T0 = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)
D = Decimal

Step = Callable[[StorageAdapter], AppendResult]


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def trade(n: int, side: str, qty: str, symbol: str, price: str, fee: str) -> Step:  # noqa: PLR0917
    return lambda a: a.save_trade(
        Trade(
            trade_id=f"T{n}",
            portfolio_id=PID,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            quantity=D(qty),
            price=D(price),
            fees=D(fee),
            executed_at=at(n),
            order_id=f"O{n}",
        )
    )


def cancel(n: int, key: str | None = None) -> Step:
    return lambda a: a.cancel_trade(
        TradeCancelled(trade_id=f"T{n}", portfolio_id=PID, reason="busted", occurred_at=at(60)),
        idempotency_key=key,
    )


#: The events of the example, step by step (the doc's "#" column).
STEPS: dict[int, Step] = {
    1: lambda a: a.open_portfolio(
        PortfolioOpened(portfolio_id=PID, name="Demo", base_currency="USD", opened_at=T0)
    ),
    2: lambda a: a.deposit_cash(
        CashDeposited(deposit_id="D1", portfolio_id=PID, amount=D("10000.00"), occurred_at=T0)
    ),
    3: trade(1, "buy", "3", "ACME", "10.00", "1.00"),
    4: trade(2, "buy", "3", "ACME", "10.01", "1.00"),
    5: trade(3, "buy", "1", "ACME", "10.02", "0.50"),
    6: trade(4, "sell", "2", "ACME", "10.50", "1.00"),
    7: trade(5, "sell", "8", "ACME", "10.40", "1.25"),
    8: trade(6, "buy", "3", "ACME", "10.10", "0.75"),
    9: trade(7, "buy", "10", "ZETA", "4.50", "0.10"),
    10: lambda a: a.save_audit_event(
        AuditEvent(
            id="S1",
            type="SignalGenerated",
            symbol="ACME",
            actor="strategy",
            occurred_at=at(20),
            details={"score": "0.7"},
        )
    ),
    11: lambda a: a.withdraw_cash(
        CashWithdrawn(withdrawal_id="W1", portfolio_id=PID, amount=D("500.00"), occurred_at=at(30))
    ),
    12: cancel(3),
    13: cancel(7),
    # A second TradeCancelled event for T3 (another key: the adapter's natural
    # key would make it a duplicate append that writes nothing).
    14: cancel(3, key="cancel:T3:again"),
    15: trade(8, "buy", "2", "ACME", "10.20", "0.25"),
}
#: The trades each step executes (number → symbol), for the trades table.
EXECUTES = {3: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6, 9: 7, 15: 8}
#: The rows each step changes (their updated_at becomes its created_at);
#: 10 (an audit event) and 14 (a second cancel) change nothing.
TOUCHES: dict[int, set[str]] = {
    1: {"portfolio"},
    2: {"portfolio"},
    **{n: {"portfolio", "ACME"} for n in (3, 4, 5, 6, 7, 8, 12, 15)},
    9: {"portfolio", "ZETA"},
    10: set(),
    11: {"portfolio"},
    13: {"portfolio", "ZETA"},
    14: set(),
}

PositionCell = tuple[Decimal, Decimal, Decimal, Decimal, int] | None


class Expected:
    def __init__(self, cells: list[str]) -> None:
        self.step = int(cells[0])
        self.event = cells[1]
        self.positions = {"ACME": self._position(cells[2]), "ZETA": self._position(cells[3])}
        self.cash, self.realized_pnl, self.fees = (D(c) for c in cells[4:7])
        self.cancelled = {c.strip() for c in cells[7].split(",") if c.strip()}

    @staticmethod
    def _position(cell: str) -> PositionCell:
        if cell == "—":
            return None
        q, avg, pnl, fees, n = (part.strip() for part in cell.split("·"))
        return (D(q), D(avg), D(pnl), D(fees), int(n))


def doc_table() -> list[Expected]:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(
        r"<!-- worked-example:begin -->\n(.*?)<!-- worked-example:end -->", text, re.DOTALL
    )
    assert match, f"{DOC}: the worked-example table markers are missing"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")][2:]
    table = [Expected([c.strip() for c in row.strip().strip("|").split("|")]) for row in rows]
    assert [r.step for r in table] == sorted(STEPS), "the doc's steps are not the test's steps"
    return table


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=4)) as s:
        yield s


def rows(conn: psycopg.Connection[Any], query: LiteralString) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(query, (PID,)).fetchall()


def test_worked_example_number_for_number(store: EventStore, dsn: str) -> None:
    adapter = StorageAdapter(store)
    table = doc_table()
    runner = ProjectionRunner(store, dsn, batch_size=3)
    assert runner.acquire()
    last_change: dict[str, dt.datetime] = {}  # row → created_at of its last change
    executed_at_position: dict[str, int] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for want in table:
                result = STEPS[want.step](adapter)
                assert not result.duplicate, f"step {want.step} wrote nothing"
                (position,) = result.positions
                row = conn.execute(
                    "SELECT created_at, tx_id::text FROM utcp.stored_events WHERE position = %s",
                    (position,),
                ).fetchone()
                assert row is not None
                catch_up_through(runner, f"{row[1]}/{position}")
                for name in TOUCHES[want.step]:
                    last_change[name] = row[0]
                if want.step in EXECUTES:
                    executed_at_position[f"T{EXECUTES[want.step]}"] = position
                check_step(conn, adapter, want, last_change, executed_at_position)
    finally:
        runner.release()

    # The adapter's readers see the final rows; the trades keep their inputs.
    portfolio = get_portfolio(adapter.store, PID)
    assert portfolio is not None
    final = table[-1]
    assert (portfolio.cash, portfolio.realized_pnl, portfolio.fees) == (
        final.cash,
        final.realized_pnl,
        final.fees,
    )
    listed = {t.trade_id: t for t in adapter.list_trades(portfolio_id=PID, status="any").items}
    assert set(listed) == {f"T{n}" for n in range(1, 9)}
    # By default the trades that stand; cancelled ones on request (T3
    # cancelled twice is listed once).
    standing = adapter.list_trades(portfolio_id=PID)
    assert [t.trade_id for t in standing.items] == [t for t in listed if t not in {"T3", "T7"}]
    assert standing.next is None
    cancelled = adapter.list_trades(portfolio_id=PID, status="cancelled")
    assert [t.trade_id for t in cancelled.items] == ["T3", "T7"]
    # Paged, the filtered lists come out whole and in order, pages full.
    pages, after = [], None
    while True:
        page = adapter.list_trades(portfolio_id=PID, limit=4, after=after)
        pages.append([t.trade_id for t in page.items])
        if page.next is None:
            break
        after = page.next
    assert pages == [
        [t.trade_id for t in standing.items][:4],
        [t.trade_id for t in standing.items][4:],
    ]
    assert (listed["T3"].quantity, listed["T3"].price, listed["T3"].fees) == (
        D(1),
        D("10.02"),
        D("0.50"),
    )


def catch_up_through(runner: ProjectionRunner, checkpoint: str) -> None:
    """Project until the step's event is applied. A reader sees a committed
    event only once every older transaction of the cluster has ended
    (docs/design.md §4): on a shared server that can take a while, so first wait
    for the readers' horizon to pass the event's transaction."""
    wait_for_horizon(runner.store, after=checkpoint.split("/", maxsplit=1)[0])
    runner.catch_up()
    assert runner.checkpoint() == checkpoint, "the projection stopped short of the step's event"


def check_step(
    conn: psycopg.Connection[Any],
    adapter: StorageAdapter,
    want: Expected,
    last_change: dict[str, dt.datetime],
    executed_at_position: dict[str, int],
) -> None:
    where = f"step {want.step} ({want.event})"
    (portfolio,) = rows(conn, "SELECT * FROM utcp.portfolios WHERE portfolio_id = %s")
    got_pf = (portfolio["cash"], portfolio["realized_pnl"], portfolio["fees"])
    assert got_pf == (want.cash, want.realized_pnl, want.fees), where
    assert (portfolio["name"], portfolio["base_currency"], portfolio["opened_at"]) == (
        "Demo",
        "USD",
        T0,
    )
    assert portfolio["updated_at"] == last_change["portfolio"], where

    positions = {
        r["symbol"]: r for r in rows(conn, "SELECT * FROM utcp.positions WHERE portfolio_id = %s")
    }
    for symbol, cell in want.positions.items():
        if cell is None:
            assert symbol not in positions, f"{where}: {symbol} should have no row"
            continue
        row = positions.pop(symbol)
        got = (row["quantity"], row["avg_cost"], row["realized_pnl"], row["fees"])
        assert got == cell[:4], f"{where}: {symbol}"
        assert row["trade_count"] == cell[4], f"{where}: {symbol}"
        assert row["updated_at"] == last_change[symbol], f"{where}: {symbol}"
    assert positions == {}, f"{where}: unexpected positions"
    through_adapter = {
        p.symbol: (p.quantity, p.avg_cost, p.realized_pnl, p.fees, p.trade_count)
        for p in get_positions(adapter.store, PID)
    }
    assert through_adapter == {s: c for s, c in want.positions.items() if c is not None}, where
    # Handed out plain: what the table holds as 230.500000000000 or 0E-12
    # comes back as 230.5 and 0, the same values.
    for amounts in through_adapter.values():
        for amount in amounts[:4]:
            assert amount == plain_decimal(amount), where
            assert amount.as_tuple() == plain_decimal(amount).as_tuple(), f"{where}: {amount!r}"

    trades = {
        r["trade_id"]: r for r in rows(conn, "SELECT * FROM utcp.trades WHERE portfolio_id = %s")
    }
    assert set(trades) == set(executed_at_position), where
    for tid, row in trades.items():
        expected_status = "cancelled" if tid in want.cancelled else "executed"
        assert row["status"] == expected_status, f"{where}: {tid}"
        assert row["event_position"] == executed_at_position[tid], f"{where}: {tid}"
        assert row["order_id"] == f"O{tid[1:]}", f"{where}: {tid}"
