"""Replay properties of the trading projection (docs/design.md §2.6).

For generated trading sessions — several portfolios and symbols, deposits
and withdrawals, buys and sells with shorts, flips and zero crossings,
cancellations of earlier trades (some twice), audit and other events mixed
in, some appends carrying several events — three computations must give
exactly the same rows of utcp.trades, utcp.positions and utcp.portfolios:

(a) the live tables, processed incrementally in random batch sizes, with
    the worker stopped and restarted at random points, crashed in the
    middle of a batch (an exception before the commit, or its backend
    terminated), and resumed by a new worker;
(b) a rebuild from empty shadow tables, in one pass;
(c) the plain-Python reference model of tests/support/reference_model.py.

Every column is compared, Decimals exactly (updated_at and event_position
too: they come from the log).

One throwaway database per module. Each example uses fresh portfolio ids,
and its workers (own checkpoint names) start at the checkpoint where the
log stood before its events: the earlier examples' portfolios cannot
touch its rows, and the examples stay independent (a failing example does
not poison the next ones, so hypothesis can shrink). The last test then
rebuilds the WHOLE module log from its start and compares every row with
the live tables and the model.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from eventstore import EventStore, NewEvent, Settings, StoredEvent
from projections.runner import ProjectionRunner
from projections.sql import LIVE, Tables, shadow_tables
from projections.trading import TradingProjection
from tests.support.reference_model import reference_model
from trading.events import (
    AuditEvent,
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
)

#: Examples per run (about 0.2 s each on the 2-core machine: the module
#: runs in about a minute); the ``thorough`` hypothesis profile
#: (max_examples=500, 5 times the default 100) multiplies it.
BASE_EXAMPLES = 250
EXAMPLES = BASE_EXAMPLES * max(1, settings().max_examples // 100)

SYMBOLS = ("AAA", "BRK.B", "BTC-USD")
WAIT = 60.0  # a generous bound for what takes milliseconds
T0 = dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.UTC)
D = Decimal

Rows = tuple[dict[Any, dict[str, Any]], dict[Any, dict[str, Any]], dict[Any, dict[str, Any]]]


# -- the sessions ----------------------------------------------------------------


class Chooser(Protocol):
    """Where a session's choices come from: hypothesis, or a seeded Random."""

    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[Any]) -> Any: ...
    def decimal(self, kind: str) -> Decimal: ...


class Open(NamedTuple):
    p: int


class Cash(NamedTuple):
    p: int
    amount: Decimal  # > 0 deposit, < 0 withdrawal
    group: bool


class Fill(NamedTuple):
    p: int
    s: int
    side: str
    qty: Decimal
    price: Decimal
    fee: Decimal
    group: bool


class Cancel(NamedTuple):
    trade: int  # index into the session's Fills
    group: bool


class Audit(NamedTuple):
    s: int
    registered: bool  # an AuditEvent, or an unregistered "OrderPlaced"


Op = Open | Cash | Fill | Cancel | Audit


def session_ops(c: Chooser, max_ops: int) -> list[Op]:
    """A trading session: opens first, then a mix; closes and flips are
    steered to happen often (the quantity that closes the position exactly,
    or more)."""
    portfolios = c.integer(1, 3)
    symbols = c.integer(1, len(SYMBOLS))
    ops: list[Op] = [Open(p) for p in range(portfolios)]
    held: dict[tuple[int, int], Decimal] = {}
    fills: list[Fill] = []
    cancelled: set[int] = set()
    for _ in range(c.integer(0, max_ops)):
        kind = c.choice(("fill",) * 6 + ("cancel",) * 2 + ("deposit", "withdraw", "audit"))
        p = c.integer(0, portfolios - 1)
        group = c.choice((False, False, True))
        if kind == "fill":
            s = c.integer(0, symbols - 1)
            now = held.get((p, s), D(0))
            mode = c.choice(("free", "free", "close", "flip"))
            if mode != "free" and now != 0 and abs(now) < AMOUNT_TOP:
                side = "sell" if now > 0 else "buy"
                with decimal.localcontext(EXACT_SUMS):
                    qty = abs(now) + (c.decimal("qty") if mode == "flip" else 0)
                if qty >= AMOUNT_TOP:
                    qty = abs(now)  # a flip beyond the limits: close instead
            else:
                side = c.choice(("buy", "sell"))
                qty = c.decimal("qty")
            fill = Fill(p, s, side, qty, c.decimal("price"), c.decimal("fee"), group)
            with decimal.localcontext(EXACT_SUMS):
                held[(p, s)] = now + (qty if side == "buy" else -qty)
            fills.append(fill)
            ops.append(fill)
        elif kind == "cancel" and fills:
            i = c.integer(0, len(fills) - 1)  # may be cancelled already: a no-op
            if i not in cancelled:
                f = fills[i]
                with decimal.localcontext(EXACT_SUMS):
                    held[(f.p, f.s)] -= f.qty if f.side == "buy" else -f.qty
                cancelled.add(i)
            ops.append(Cancel(i, group))
        elif kind in ("deposit", "withdraw"):
            amount = c.decimal("cash")
            ops.append(Cash(p, amount if kind == "deposit" else amount.copy_negate(), group))
        elif kind == "audit":
            ops.append(Audit(c.integer(0, symbols - 1), c.choice((True, False))))
    return ops


#: The top of eventstore.limits: below 10**15, 18 places (33 digits).
AMOUNT_TOP = D(10) ** 15
#: The generator's own sums of quantities: exact, or an error.
EXACT_SUMS = decimal.Context(prec=200, traps=[decimal.Inexact])
EDGE = st.integers(10**33 - 10**9, 10**33 - 1).map(lambda n: D(f"{n}e-18"))
DECIMALS = {
    "qty": [
        st.integers(1, 30).map(D),
        st.decimals(min_value=D("0.0001"), max_value=50, places=4, allow_nan=False),
        EDGE,
    ],
    "price": [
        st.decimals(min_value=D("0.01"), max_value=500, places=2, allow_nan=False),
        st.decimals(min_value=0, max_value=5, places=6, allow_nan=False),
        st.decimals(min_value=D("0.5"), max_value=2, places=14, allow_nan=False),
        EDGE,
    ],
    "fee": [
        st.just(D(0)),
        st.decimals(min_value=0, max_value=3, places=2, allow_nan=False),
        EDGE,
    ],
    "cash": [
        st.decimals(min_value=D("0.01"), max_value=100_000, places=2, allow_nan=False),
        EDGE,
    ],
}


class Drawn:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def decimal(self, kind: str) -> Decimal:
        value: Decimal = self.draw(st.one_of(*DECIMALS[kind]))
        return value


class Seeded:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(options)

    def decimal(self, kind: str) -> Decimal:
        if kind == "qty":
            return D(self.rng.randint(1, 400_000)) / 10_000
        if kind == "price":
            return D(self.rng.randint(1, 10**8)) / 10 ** self.rng.choice((2, 6, 14))
        if kind == "fee":
            return D(self.rng.randint(0, 300)) / 100
        return D(self.rng.randint(1, 10**7)) / 100


@st.composite
def sessions(draw: st.DrawFn, max_ops: int = 60) -> list[Op]:
    return session_ops(Drawn(draw), max_ops)


class Segment(NamedTuple):
    """One worker's life: its batch size, and how it ends."""

    batch_size: int
    batches: int  # after this many batches it stops or crashes…
    ending: str  # "stop" | "raise" | "terminate" | "until"
    until: float  # for "until": the fraction of the example's events to reach


segments = st.builds(
    Segment,
    batch_size=st.one_of(st.integers(1, 7), st.sampled_from([16, 500])),
    batches=st.integers(1, 4),
    ending=st.sampled_from(["stop", "raise", "terminate", "until"]),
    until=st.floats(0, 1),
)
plans = st.tuples(st.lists(segments, max_size=5), st.integers(1, 40))


# -- appending a session ------------------------------------------------------------


def session_events(ops: list[Op], tag: str) -> list[tuple[str, list[NewEvent]]]:
    """The appends of a session: (stream, events), grouped as drawn."""
    appends: list[tuple[str, list[NewEvent]]] = []
    fills: list[tuple[str, Fill]] = []
    for n, op in enumerate(ops):
        at = T0 + dt.timedelta(seconds=n)
        group = False
        if isinstance(op, Open):
            pid = f"{tag}-p{op.p}"
            event = NewEvent(
                PortfolioOpened.EVENT_TYPE,
                PortfolioOpened(
                    portfolio_id=pid, name=f"P{op.p}", base_currency="USD", opened_at=at
                ),
            )
        elif isinstance(op, Cash):
            pid, group = f"{tag}-p{op.p}", op.group
            if op.amount > 0:
                payload: Any = CashDeposited(
                    deposit_id=f"{tag}-c{n}", portfolio_id=pid, amount=op.amount, occurred_at=at
                )
            else:
                payload = CashWithdrawn(
                    withdrawal_id=f"{tag}-c{n}",
                    portfolio_id=pid,
                    amount=op.amount.copy_negate(),
                    occurred_at=at,
                )
            event = NewEvent(payload.EVENT_TYPE, payload)
        elif isinstance(op, Fill):
            pid, group = f"{tag}-p{op.p}", op.group
            tid = f"{tag}-t{len(fills)}"
            fills.append((tid, op))
            event = NewEvent(
                Trade.EVENT_TYPE,
                Trade(
                    trade_id=tid,
                    portfolio_id=pid,
                    symbol=SYMBOLS[op.s],
                    side=op.side,  # type: ignore[arg-type]
                    quantity=op.qty,
                    price=op.price,
                    fees=op.fee,
                    executed_at=at,
                    order_id=None if n % 3 else f"{tag}-o{n}",
                ),
            )
        elif isinstance(op, Cancel):
            tid, fill = fills[op.trade]
            pid, group = f"{tag}-p{fill.p}", op.group
            event = NewEvent(
                TradeCancelled.EVENT_TYPE,
                TradeCancelled(trade_id=tid, portfolio_id=pid, reason="busted", occurred_at=at),
            )
        else:
            symbol = SYMBOLS[op.s]
            if op.registered:
                audit = AuditEvent(
                    id=f"{tag}-a{n}",
                    type="SignalGenerated",
                    symbol=symbol,
                    actor="strategy",
                    occurred_at=at,
                    details={"score": "0.5"},
                )
                appends.append((f"audit-{symbol}", [NewEvent(audit.type, audit)]))
            else:
                order = {"order_id": f"{tag}-o{n}", "symbol": symbol, "qty": "1"}
                appends.append((f"orders-{tag}", [NewEvent("OrderPlaced", order)]))
            continue
        stream = f"portfolio-{pid}"
        if group and appends and appends[-1][0] == stream:
            appends[-1][1].append(event)
        else:
            appends.append((stream, [event]))
    return appends


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=4)) as s:
        yield s


@pytest.fixture(scope="module")
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


_numbers = itertools.count()


def read_rows(conn: psycopg.Connection[Any], tables: Tables, pids: list[str] | None = None) -> Rows:
    """The rows of ``tables``, by key, for ``pids``' portfolios (None: every row)."""
    where = sql.SQL("TRUE" if pids is None else "portfolio_id = ANY(%s)")
    params = None if pids is None else (pids,)
    out: list[dict[Any, dict[str, Any]]] = []
    for table, key in (
        ("trades", ("trade_id",)),
        ("positions", ("portfolio_id", "symbol")),
        ("portfolios", ("portfolio_id",)),
    ):
        cur = conn.cursor(row_factory=dict_row)
        query = sql.SQL("SELECT * FROM {} WHERE {}").format(tables.ident(table), where)
        found = cur.execute(query, params).fetchall()
        out.append({(r[key[0]] if len(key) == 1 else tuple(r[k] for k in key)): r for r in found})
    return out[0], out[1], out[2]


class Harness:
    """Runs one example: append, then (a), (b), (c), and compares."""

    def __init__(self, store: EventStore, dsn: str, admin: psycopg.Connection[Any]) -> None:
        self.store = store
        self.dsn = dsn
        self.admin = admin
        self.crashes = 0

    def head(self) -> str:
        """The checkpoint of the last event in the log (nothing is appending)."""
        row = self.admin.execute(
            "SELECT tx_id::text || '/' || position::text FROM utcp.stored_events "
            "ORDER BY tx_id DESC, position DESC LIMIT 1"
        ).fetchone()
        return "0/0" if row is None else str(row[0])

    def events_after(self, checkpoint: str) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        while page := self.store.read_all(after=checkpoint, limit=1000):
            out.extend(page)
            checkpoint = page[-1].checkpoint
        return out

    def readable(self, start: str, count: int) -> list[StoredEvent]:
        """The example's ``count`` events, once readers can see them all.

        A reader of the log sees a committed event only when every older
        transaction of the cluster has ended (docs/design.md §4): on a shared
        server another session's open transaction holds it back for a
        while. Only this module appends to its database."""
        deadline = time.monotonic() + WAIT
        while len(events := self.events_after(start)) < count:
            assert time.monotonic() < deadline, f"{len(events)} of {count} events readable"
            time.sleep(0.02)
        assert len(events) == count, "someone else appends to the module's database"
        return events

    def start_at(self, name: str, checkpoint: str) -> None:
        tx, pos = checkpoint.split("/")
        self.admin.execute(
            "INSERT INTO utcp.projection_checkpoints (projection, checkpoint_tx, "
            "checkpoint_position) VALUES (%s, %s::xid8, %s)",
            (name, tx, int(pos)),
        )

    def forget(self, *names: str) -> None:
        self.admin.execute(
            "DELETE FROM utcp.projection_checkpoints WHERE projection = ANY(%s)", (list(names),)
        )

    def create_shadow(self, suffix: str) -> Tables:
        tables = shadow_tables(suffix)
        for live, shadow in zip(LIVE.names(), tables.names(), strict=True):
            self.admin.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier("utcp", shadow), sql.Identifier("utcp", live)
                )
            )
        return tables

    def drop(self, tables: Tables) -> None:
        for name in tables.names():
            self.admin.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("utcp", name))
            )

    def rows(self, tables: Tables, pids: list[str] | None) -> Rows:
        """The rows of ``pids``' portfolios (None: every row)."""
        return read_rows(self.admin, tables, pids)

    # (a) ------------------------------------------------------------------------------

    def incremental(
        self, name: str, events: list[StoredEvent], plan: tuple[list[Segment], int]
    ) -> None:
        """The live worker's lives: each runs some batches, then stops, or
        crashes mid-batch; a new worker takes over where the checkpoint is."""
        life_plan, final_batch = plan
        for life in life_plan:
            projection = CrashingProjection(self.admin, life)
            runner = ProjectionRunner(
                self.store, self.dsn, projection, checkpoint_name=name, batch_size=life.batch_size
            )
            assert runner.acquire(standby=0.01)
            try:
                if life.ending == "until":
                    if events:
                        target = min(len(events) - 1, int(life.until * len(events)))
                        done = _position_in(events, runner.checkpoint())
                        runner.catch_up(until=events[target].checkpoint)
                        # Up to the target, or where it was when already past it.
                        assert _position_in(events, runner.checkpoint()) == max(done, target)
                elif life.ending == "stop":
                    stopper = StopAfter(life.batches)
                    runner.catch_up(stopper.stop, progress=stopper.progress)
                else:
                    before = runner.checkpoint()
                    try:
                        runner.catch_up()
                    except (SimulatedCrash, psycopg.OperationalError):
                        if not projection.crashed:
                            raise  # a real failure, not the simulated one
                        # the batch rolled back: the next worker redoes it
                    else:
                        assert projection.batches < life.batches, "the crash did not happen"
                    if projection.crashed:
                        self.crashes += 1
                        self._assert_checkpoint_is_a_batch_boundary(name, before, events, life)
            finally:
                runner.release()
        runner = ProjectionRunner(
            self.store, self.dsn, checkpoint_name=name, batch_size=final_batch
        )
        assert runner.acquire(standby=0.01)
        try:
            runner.catch_up()
            assert runner.checkpoint() == (events[-1].checkpoint if events else runner.checkpoint())
        finally:
            runner.release()

    def _assert_checkpoint_is_a_batch_boundary(
        self, name: str, before: str, events: list[StoredEvent], life: Segment
    ) -> None:
        """After a crash in batch n, the checkpoint is the end of batch n-1."""
        row = self.admin.execute(
            "SELECT checkpoint_tx::text || '/' || checkpoint_position::text "
            "FROM utcp.projection_checkpoints WHERE projection = %s",
            (name,),
        ).fetchone()
        assert row is not None
        start = _position_in(events, before) + 1
        committed = (life.batches - 1) * life.batch_size
        assert start + committed <= len(events), "more batches committed than events"
        expected = before if committed == 0 else events[start + committed - 1].checkpoint
        assert row[0] == expected, "a crashed batch left its checkpoint behind"

    # (b) ------------------------------------------------------------------------------

    def rebuild(self, name: str, tables: Tables) -> None:
        runner = ProjectionRunner(self.store, self.dsn, tables=tables, checkpoint_name=name)
        assert runner.acquire(standby=0.01)
        try:
            runner.catch_up()
        finally:
            runner.release()


def _position_in(events: list[StoredEvent], checkpoint: str) -> int:
    """The index of the event at ``checkpoint`` (-1: before the example's events)."""
    return next((i for i, e in enumerate(events) if e.checkpoint == checkpoint), -1)


class StopAfter:
    """Asks catch_up to stop after ``batches`` batches (a clean shutdown)."""

    def __init__(self, batches: int) -> None:
        self.left = batches
        self.stop = threading.Event()

    def progress(self, _count: int, _last: StoredEvent) -> None:
        self.left -= 1
        if self.left <= 0:
            self.stop.set()


class SimulatedCrash(Exception):
    """The worker 'dies' in the middle of a batch, before the commit."""


class CrashingProjection(TradingProjection):
    """The trading projection, which dies during batch ``life.batches`` after
    applying it (before the runner commits it), when ``life.ending`` says
    so: by raising, or by having its backend terminated."""

    def __init__(self, admin: psycopg.Connection[Any], life: Segment) -> None:
        self.admin = admin
        self.life = life
        self.batches = 0
        self.crashed = False

    def apply(
        self, conn: psycopg.Connection[Any], events: Sequence[StoredEvent], tables: Tables
    ) -> None:
        self.batches += 1
        super().apply(conn, events, tables)
        if self.life.ending in ("raise", "terminate") and self.batches == self.life.batches:
            self.crashed = True
            if self.life.ending == "raise":
                raise SimulatedCrash(f"crashed in batch {self.batches}")
            # Waits (up to 10 s) until the backend is gone: the runner's next
            # statement, the checkpoint update, fails, and nothing commits.
            self.admin.execute("SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,))


def run_example(
    harness: Harness, ops: list[Op], plan: tuple[list[Segment], int]
) -> tuple[list[StoredEvent], Rows]:
    """Append the session, compute (a), (b) and (c), compare them; return
    the example's events and the model's rows."""
    n = next(_numbers)
    tag = f"x{n}-{uuid.uuid4().hex[:6]}"
    start = harness.head()
    appended = 0
    for stream, new_events in session_events(ops, tag):
        appended += len(harness.store.append(stream, new_events).positions)
    events = harness.readable(start, appended)
    pids = sorted({f"{tag}-p{op.p}" for op in ops if isinstance(op, Open)})
    live, rebuilt = f"live-{tag}", f"rebuild-{tag}"
    tables = harness.create_shadow(f"t{n}")
    try:
        harness.start_at(live, start)
        harness.start_at(rebuilt, start)
        harness.incremental(live, events, plan)  # (a)
        harness.rebuild(rebuilt, tables)  # (b)
        a = harness.rows(LIVE, pids)
        b = harness.rows(tables, pids)
        c = reference_model(events)  # (c)
        assert_same(a, b, "incremental (live tables)", "rebuild (shadow tables)")
        assert_same(a, c, "incremental (live tables)", "reference model")
        return events, c
    finally:
        harness.drop(tables)
        harness.forget(live, rebuilt)


def describe(ops: list[Op], events: list[StoredEvent], model: Rows, crashes: int) -> None:
    """What the example exercised (--hypothesis-show-statistics)."""
    trades, positions, _ = model
    fills = [op for op in ops if isinstance(op, Fill)]
    held: dict[tuple[int, int], Decimal] = {}
    crossings = flats = 0
    for f in fills:
        before = held.get((f.p, f.s), D(0))
        after = before + (f.qty if f.side == "buy" else -f.qty)
        crossings += before * after < 0
        flats += before != 0 and after == 0
        held[(f.p, f.s)] = after
    cancels = [op.trade for op in ops if isinstance(op, Cancel)]
    removed = {(t["portfolio_id"], t["symbol"]) for t in trades.values()} - set(positions)
    event(f"events: {'<20' if len(events) < 20 else '20-49' if len(events) < 50 else '50+'}")
    event(f"flips (ignoring cancels): {'0' if not crossings else '1-2' if crossings < 3 else '3+'}")
    event(f"closes to flat: {'0' if not flats else '1+'}")
    event(f"cancellations: {'0' if not cancels else '1-2' if len(cancels) < 3 else '3+'}")
    event(f"a trade cancelled twice: {len(set(cancels)) < len(cancels)}")
    event(f"a position removed (all its trades cancelled): {bool(removed)}")
    transactions = {e.checkpoint.split("/")[0] for e in events}
    event(f"appends of several events: {len(transactions) < len(events)}")
    event(f"worker crashes mid-batch: {crashes}")


def assert_same(x: Rows, y: Rows, x_name: str, y_name: str) -> None:
    for table, xs, ys in zip(("trades", "positions", "portfolios"), x, y, strict=True):
        assert set(xs) == set(ys), f"{table}: {x_name} has {sorted(xs)}, {y_name} {sorted(ys)}"
        for key in sorted(xs):
            if xs[key] != ys[key]:
                diff = {
                    col: (xs[key].get(col), ys[key].get(col))
                    for col in sorted(set(xs[key]) | set(ys[key]))
                    if xs[key].get(col) != ys[key].get(col)
                }
                raise AssertionError(f"{table} {key}: {x_name} != {y_name}: {diff}")


# -- the tests ---------------------------------------------------------------------------


@given(ops=sessions(), plan=plans)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_incremental_with_crashes_equals_rebuild_and_reference_model(
    store: EventStore, dsn: str, admin: psycopg.Connection[Any], ops: list[Op], plan: Any
) -> None:
    harness = Harness(store, dsn, admin)
    events, model = run_example(harness, ops, plan)
    describe(ops, events, model, harness.crashes)


def test_whole_log_rebuild_equals_live_tables_and_model(
    store: EventStore, dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """From the very start of the module's log (every example above, and a
    seeded session of its own), in one pass and in small batches: every row
    equals the live tables and the reference model."""
    harness = Harness(store, dsn, admin)
    for seed in (1, 2):
        ops = session_ops(Seeded(seed), max_ops=120)
        plan = ([Segment(3, 2, "raise", 0.0), Segment(5, 1, "terminate", 0.0)], 7)
        run_example(harness, ops, plan)
    events = harness.events_after("0/0")
    model = reference_model(events)
    live = harness.rows(LIVE, None)
    assert len(live[0]) > 50, "the log should hold at least the seeded sessions' trades"
    for batch_size in (500, 61):
        tables = harness.create_shadow(f"whole{batch_size}")
        name = f"whole-{batch_size}-{uuid.uuid4().hex[:6]}"
        try:
            runner = ProjectionRunner(
                store, dsn, tables=tables, checkpoint_name=name, batch_size=batch_size
            )
            assert runner.acquire(standby=0.01)
            try:
                assert runner.catch_up() == len(events)
            finally:
                runner.release()
            rebuilt = harness.rows(tables, None)
            assert_same(live, rebuilt, "live tables", f"whole-log rebuild ({batch_size})")
            assert_same(rebuilt, model, f"whole-log rebuild ({batch_size})", "reference model")
        finally:
            harness.drop(tables)
            harness.forget(name)
