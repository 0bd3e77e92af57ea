"""The README's main job (``python -m storectl.demo``), run as a user runs
it: a subprocess against a throwaway database of its own (the demo projects
the whole log from the start, and the session database holds other tests'
events that the trading projection rightly refuses).

The demo logs in as two least-privileged roles: one in utcp_operator
(appends and reads as a writer, and the anchor, which only operators take;
``--dsn``) and one only in utcp_projector (the projection's writes,
``--projector-dsn``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from eventstore import EventStore, StoredEvent
from projections import sql as projection_sql
from projections.models import Portfolio, Position
from projections.queries import get_portfolio, get_positions
from projections.rules import replay_fills
from storectl.demo import (
    PORTFOLIOS,
    format_money,
    format_price,
    format_quantity,
    generate_session,
)
from storectl.service.keys import list_keys
from tests.support.database import (
    admin_dsn,
    deployed_database,
    drop_database,
    dsn_for,
    login_role,
    run_cli,
    unique_name,
)
from trading import StorageAdapter
from trading.adapter import portfolio_stream
from trading.events import (
    AuditEvent,
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
)
from trading.setups import SetupStore

#: Bounds on how long a broken run can hang (not timing assertions).
RUN_TIMEOUT = 300.0
LINE_TIMEOUT = 120.0
EXACT = decimal.Context(prec=80)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storectl.demo", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def new_session_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


# -- the throwaway database ----------------------------------------------------


@dataclass(frozen=True)
class DemoDB:
    admin: str  # superuser, in the demo's database
    writer: str  # a login role in utcp_operator (a writer that may take anchors)
    projector: str  # a login role only in utcp_projector

    def args(self, session: str, *more: str) -> tuple[str, ...]:
        return (
            *("--dsn", self.writer, "--projector-dsn", self.projector),
            *("--session", session, *more),
        )


@pytest.fixture(scope="module")
def demo_db() -> Iterator[DemoDB]:
    with (
        deployed_database("utcp_demo") as dsn,
        # The writer is also an operator, so that the demo can take its anchor.
        login_role(dsn, "utcp_operator") as writer,
        login_role(dsn, "utcp_projector") as projector,
    ):
        yield DemoDB(dsn, writer, projector)


@pytest.fixture(scope="module")
def demo_store(demo_db: DemoDB) -> Iterator[EventStore]:
    with EventStore.open(demo_db.writer) as store:
        yield store


# -- reading the demo's output ------------------------------------------------------


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def table_after(stdout: str, heading: str) -> list[list[str]]:
    """The rows of the table printed under the line starting with ``heading``
    (header and rule left out)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        rows.append(cells(line))
    assert lines[start + 2].strip().startswith("---"), lines[start : start + 3]
    return rows


SUMMARY = re.compile(
    r"^summary: ([\d,]+) events recorded new, ([\d,]+) already recorded \([\d.]+ s\); "
    r"([\d,]+) events projected \([\d.]+ s\); verify_chain ok \(([\d,]+) events, [\d,]+ streams, "
    r"[\d,]+ anchors?\); anchor #\d+ at \d+/\d+ over ([\d,]+) events: sha256 ([0-9a-f]{64})$",
    re.M,
)


def summary(stdout: str) -> tuple[int, int, int, int, int, str]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    *numbers, digest = match.groups()
    new, already, projected, verified, anchored = (int(n.replace(",", "")) for n in numbers)
    return new, already, projected, verified, anchored, digest


def without_timings(stdout: str) -> str:
    return re.sub(r"\([\d.]+ s\)", "(… s)", stdout)


# -- the independent recomputation ----------------------------------------------------


def expected_from_stream(events: list[StoredEvent]) -> tuple[Portfolio, list[Position]]:
    """A portfolio and its positions recomputed from its own stream: cash by
    docs/design.md §5 written out here, each position replayed from its trades
    that were not cancelled (projections.rules.replay_fills)."""
    opened = msgspec.convert(events[0].data, PortfolioOpened)
    assert events[0].type == "PortfolioOpened"
    trades: dict[str, Trade] = {}
    live: list[str] = []
    cash = Decimal(0)
    touched: dict[str, dt.datetime] = {}  # symbol -> created_at of its last change
    with decimal.localcontext(EXACT):
        for event in events[1:]:
            if event.type == "CashDeposited":
                cash += msgspec.convert(event.data, CashDeposited).amount
            elif event.type == "CashWithdrawn":
                cash -= msgspec.convert(event.data, CashWithdrawn).amount
            elif event.type == "TradeExecuted":
                trade = msgspec.convert(event.data, Trade)
                trades[trade.trade_id] = trade
                live.append(trade.trade_id)
                notional = trade.quantity * trade.price
                cash += -(notional + trade.fees) if trade.side == "buy" else notional - trade.fees
                touched[trade.symbol] = event.created_at
            elif event.type == "TradeCancelled":
                cancel = msgspec.convert(event.data, TradeCancelled)
                trade = trades[cancel.trade_id]
                live.remove(cancel.trade_id)
                notional = trade.quantity * trade.price
                cash -= -(notional + trade.fees) if trade.side == "buy" else notional - trade.fees
                touched[trade.symbol] = event.created_at
            else:
                raise AssertionError(f"unexpected {event.type} in {event.stream_id}")
    positions = []
    for symbol in sorted({trades[t].symbol for t in live}):
        state = replay_fills(
            [
                (trades[t].side, trades[t].quantity, trades[t].price, trades[t].fees)
                for t in live
                if trades[t].symbol == symbol
            ]
        )
        positions.append(
            Position(
                opened.portfolio_id,
                symbol,
                state.quantity,
                state.avg_cost,
                state.realized_pnl,
                state.fees,
                state.trade_count,
                touched[symbol],
            )
        )
    portfolio = Portfolio(
        portfolio_id=opened.portfolio_id,
        name=opened.name,
        base_currency=opened.base_currency,
        cash=cash,
        realized_pnl=sum((p.realized_pnl for p in positions), Decimal(0)),
        fees=sum((p.fees for p in positions), Decimal(0)),
        opened_at=opened.opened_at,
        updated_at=events[-1].created_at,
    )
    return portfolio, positions


# -- the session generator (no database) ---------------------------------------------


def test_session_is_deterministic_thousands_of_events_and_keeps_the_rules() -> None:
    one, two = generate_session("same"), generate_session("same")
    assert one.records == two.records
    assert generate_session("other").records != one.records
    assert len(one.records) >= 3000
    by_kind = {
        kind: [r for r in one.records if isinstance(r, kind)]
        for kind in (PortfolioOpened, CashDeposited, CashWithdrawn, Trade, TradeCancelled)
    }
    assert len(by_kind[PortfolioOpened]) == len(PORTFOLIOS) >= 3
    assert len({p.base_currency for p in by_kind[PortfolioOpened]}) >= 2
    assert by_kind[CashDeposited] and by_kind[CashWithdrawn]
    assert len(by_kind[TradeCancelled]) >= 3
    assert len({t.symbol for t in by_kind[Trade]}) >= 8
    assert any(t.quantity != t.quantity.to_integral_value() for t in by_kind[Trade])  # crypto
    kinds = {e.type for e in one.audit_events}
    assert {"SignalGenerated", "DecisionMade", "RiskCheckPassed", "OrderPlaced"} <= kinds
    ids = [getattr(r, "trade_id", None) for r in by_kind[Trade]]
    assert len(set(ids)) == len(ids)

    long_only = {one.portfolio_ids[p.key] for p in PORTFOLIOS if not p.can_short}
    opened: set[str] = set()
    cash: dict[str, Decimal] = defaultdict(Decimal)
    executed: dict[str, Trade] = {}
    live: dict[tuple[str, str], list[Trade]] = defaultdict(list)
    shorts = flips = 0
    previous: Any = None
    interleaved = 0
    for item in one.records:
        pid = getattr(item, "portfolio_id", None)
        if isinstance(item, AuditEvent):
            assert item.occurred_at.tzinfo is not None
            interleaved += isinstance(previous, Trade)
            previous = item
            continue
        previous = item
        assert pid is not None
        if isinstance(item, PortfolioOpened):
            assert pid not in opened
            opened.add(pid)
            continue
        assert pid in opened, f"{type(item).__name__} before the portfolio was opened"
        if isinstance(item, CashDeposited):
            cash[pid] += item.amount
        elif isinstance(item, CashWithdrawn):
            assert item.amount <= cash[pid], "a withdrawal larger than the cash"
            cash[pid] -= item.amount
        elif isinstance(item, Trade):
            assert item.executed_at.tzinfo is not None
            key = (pid, item.symbol)
            before = sum((q.quantity if q.side == "buy" else -q.quantity for q in live[key]), 0)
            after = before + (item.quantity if item.side == "buy" else -item.quantity)
            shorts += after < 0
            flips += (before > 0 > after) or (before < 0 < after)
            executed[item.trade_id] = item
            live[key].append(item)
            notional = item.quantity * item.price
            cash[pid] += -(notional + item.fees) if item.side == "buy" else notional - item.fees
        else:
            assert isinstance(item, TradeCancelled)
            trade = executed[item.trade_id]  # an earlier trade...
            assert trade.portfolio_id == pid  # ...of this portfolio...
            live[(pid, trade.symbol)].remove(trade)  # ...not cancelled yet
            notional = trade.quantity * trade.price
            cash[pid] -= -(notional + trade.fees) if trade.side == "buy" else notional - trade.fees
            assert item.occurred_at > trade.executed_at
        if pid in long_only:
            assert cash[pid] >= 0, f"{pid} overdrawn"
            for (owner, _symbol), trades in live.items():
                running = Decimal(0)
                for trade in trades if owner == pid else ():
                    running += trade.quantity if trade.side == "buy" else -trade.quantity
                    assert running >= 0, f"long-only {pid} short in hindsight"
    assert shorts > 0 and flips > 0
    assert interleaved > 100  # audit events between trades, not in a block


def test_formatting_is_for_people_and_exact_where_it_counts() -> None:
    assert format_quantity(Decimal("-0.25750")) == "-0.2575"
    assert format_quantity(Decimal("1E+2")) == "100"
    assert format_quantity(Decimal("1234.50")) == "1,234.5"
    assert format_quantity(Decimal("-0.000")) == "0"
    assert format_money(Decimal("-1234.5")) == "-1,234.50"
    assert format_money(Decimal("99036.505")) == "99,036.50"  # display: half-even
    assert format_price(Decimal("98632.116943000000")) == "98,632.1169"


# -- end to end ----------------------------------------------------------------------


def test_demo_records_projects_and_shows_correct_portfolios(
    demo_db: DemoDB, demo_store: EventStore
) -> None:
    session = new_session_id()
    generated = generate_session(session)
    total = len(generated.records)

    first = run_demo(*demo_db.args(session))
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert re.search(r"^projecting: [\d,]+ events in [\d.]+ s", first.stderr, re.M), first.stderr
    assert f": {total:,} events (" in first.stdout.splitlines()[0]
    new, already, projected, verified, anchored, digest = summary(first.stdout)
    assert (new, already) == (total, 0)
    log_size = demo_store.status().events
    assert projected >= total and verified == anchored == log_size

    # Recorded through the service's tools over HTTP, with a key made for the
    # run (revoked after it), and a trade setup with its risk and signal
    # before each order.
    assert re.search(r"^service: http://127\.0\.0\.1:\d+/tools \(key 'demo-", first.stderr, re.M)
    demo_keys = [k for k in list_keys(demo_store) if k.name.startswith("demo-")]
    assert demo_keys and all(k.revoked_at is not None for k in demo_keys)
    orders = [e for e in generated.audit_events if e.type == "OrderPlaced"]
    assert f"with {len(orders):,} trade setups saved" in first.stdout
    setups = SetupStore(demo_store)
    for order in orders[:3] + orders[-3:]:
        view = setups.get_setup(order.details["order_id"])
        assert view is not None and view.risk is not None and view.event is not None
        assert view.trade.symbol == order.symbol and view.event.type == "SignalGenerated"
        assert view.risk.position_size > 0 and view.trade.event_id == view.event.id

    # The projection as the demo left it equals a recomputation from each
    # portfolio's own stream, exactly; and the stream holds what was generated.
    adapter = StorageAdapter(demo_store)
    shown: dict[str, tuple[Portfolio, list[Position]]] = {}
    for spec in PORTFOLIOS:
        pid = generated.portfolio_ids[spec.key]
        events = demo_store.read_stream(portfolio_stream(pid))
        mine = [r for r in generated.records if getattr(r, "portfolio_id", None) == pid]
        assert len(events) == len(mine) and [e.type for e in events] == [
            type(r).EVENT_TYPE  # type: ignore[union-attr]
            for r in mine
        ]
        portfolio, positions = expected_from_stream(events)
        assert get_portfolio(adapter.store, pid) == portfolio
        assert get_positions(adapter.store, pid) == positions
        shown[pid] = (portfolio, positions)
    all_positions = [p for _, ps in shown.values() for p in ps]
    assert any(p.quantity < 0 for p in all_positions), "no short position to show"

    # utcp.trades: one row per executed trade, the cancelled ones marked so.
    cancelled = {c.trade_id for c in generated.cancellations}
    with psycopg.connect(demo_db.admin) as conn:
        rows = conn.execute(
            "SELECT trade_id, status FROM utcp.trades WHERE portfolio_id = ANY(%s)",
            (list(generated.portfolio_ids.values()),),
        ).fetchall()
    assert dict(rows) == {
        t.trade_id: "cancelled" if t.trade_id in cancelled else "executed" for t in generated.trades
    }

    # The tables printed are the projected rows, formatted for people.
    portfolio_rows = table_after(first.stdout, "portfolios (")
    assert portfolio_rows == [
        [
            p.portfolio_id,
            p.name,
            p.base_currency,
            format_money(p.cash),
            format_money(p.realized_pnl),
            format_money(p.fees),
            f"{sum(1 for x in ps if x.quantity != 0)} of {len(ps)}",
        ]
        for p, ps in shown.values()
    ]
    for pid, (portfolio, positions) in shown.items():
        rows = table_after(first.stdout, f"{pid}: {portfolio.name}, {portfolio.base_currency}")
        assert rows == [
            [
                p.symbol,
                "long" if p.quantity > 0 else "SHORT" if p.quantity < 0 else "flat",
                format_quantity(p.quantity),
                format_price(p.avg_cost) if p.quantity else "-",
                format_money(p.realized_pnl),
                format_money(p.fees),
                str(p.trade_count),
            ]
            for p in positions
        ]
    assert re.search(r"^  \S+\s+SHORT\s+-[\d,.]+\s", first.stdout, re.M)

    # Again: nothing new, nothing to project, the same tables, the same anchor.
    again = run_demo(*demo_db.args(session))
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout) == (0, total, 0, log_size, log_size, digest)
    assert demo_store.status().events == log_size
    body = without_timings(first.stdout).rsplit("\nsummary:", 1)[0]
    assert without_timings(again.stdout).rsplit("\nsummary:", 1)[0] == body
    for pid, (portfolio, positions) in shown.items():
        assert get_portfolio(adapter.store, pid) == portfolio
        assert get_positions(adapter.store, pid) == positions


def test_demo_as_the_writer_alone_cannot_project_and_says_what_it_needs(
    demo_db: DemoDB,
) -> None:
    proc = run_demo("--dsn", demo_db.writer, "--session", new_session_id())
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("storectl.demo: error: ")
    assert "utcp_projector" in line and "--projector-dsn" in line
    assert "\nsummary:" not in proc.stdout


@pytest.fixture
def lock_holder(demo_db: DemoDB) -> Iterator[psycopg.Connection[Any]]:
    """A connection holding the trading projection's lease, as an active
    worker does (close it to let go)."""
    conn = psycopg.connect(demo_db.admin, autocommit=True)
    try:
        lease = {"name": "trading", "nonce": 0x5EED_0001}
        conn.execute(projection_sql.ENSURE_LEASE, ("trading",))
        conn.execute(projection_sql.TAKE_NONCE, (lease["nonce"],))
        assert conn.execute(projection_sql.CLAIM_LEASE, lease).rowcount == 1
        yield conn
    finally:
        conn.close()


def test_demo_waits_as_standby_then_fails_clearly_while_another_worker_is_active(
    demo_db: DemoDB, lock_holder: psycopg.Connection[Any]
) -> None:
    proc = run_demo(*demo_db.args(new_session_id(), "--standby-timeout", "1"))
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert re.search(r"^another worker is projecting 'trading' .*as a standby$", proc.stderr, re.M)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("storectl.demo: error: another worker still holds"), line
    assert f"(backend pid {lock_holder.info.backend_pid}, role " in line
    assert "portfolios (" not in proc.stdout and "\nsummary:" not in proc.stdout


def test_demo_takes_over_when_the_active_worker_goes_away(
    demo_db: DemoDB, lock_holder: psycopg.Connection[Any]
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storectl.demo",
            *demo_db.args(new_session_id(), "--standby-timeout", str(RUN_TIMEOUT)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout: list[str] = []

    def pump(pipe: IO[str], into: Callable[[str], object]) -> None:
        for line in pipe:
            into(line)
        into("")

    threading.Thread(target=pump, args=(proc.stderr, lines.put), daemon=True).start()
    reader = threading.Thread(target=pump, args=(proc.stdout, stdout.append), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not seen or "as a standby" not in seen[-1]:
            seen.append(lines.get(timeout=LINE_TIMEOUT))
            assert seen[-1], f"the demo ended before waiting: {''.join(seen)}"
        lock_holder.close()  # the active worker dies
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := lines.get(timeout=LINE_TIMEOUT)) != "":
        seen.append(line)
    reader.join(timeout=LINE_TIMEOUT)
    assert proc.returncode == 0, "".join(seen)
    assert any(line.startswith("the other worker is gone") for line in seen), seen
    new, already, projected, *_ = summary("".join(stdout))
    assert new > 3000 and already == 0 and projected >= new
    assert "portfolios (utcp.portfolios" in "".join(stdout)


def test_demo_stops_clearly_on_an_event_the_projection_refuses() -> None:
    with deployed_database("utcp_demo_poison") as dsn:
        orphan = {
            "trade_id": "orphan-1",
            "portfolio_id": "never-opened",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": "1",
            "price": "1",
            "executed_at": "2025-11-17T14:30:00Z",
        }
        run_cli(
            *("append", "portfolio-never-opened", "TradeExecuted", "--dsn", dsn),
            *("--data", msgspec.json.encode(orphan).decode()),
        )
        proc = run_demo("--dsn", dsn, "--session", new_session_id())
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("cannot apply") == 1, proc.stderr  # said once
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("storectl.demo: error: projection 'trading' cannot apply event ")
    assert "portfolio-never-opened v1" in line and "never opened" in line
    assert "fresh database" in line
    assert "portfolios (" not in proc.stdout


def test_demo_without_schema_says_so() -> None:
    name = unique_name("utcp_demo_empty")
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        proc = run_demo("--dsn", dsn_for(name))
    finally:
        drop_database(name)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("storectl.demo: error: ")
    assert "eventstore db deploy" in line
    assert proc.stdout == ""
