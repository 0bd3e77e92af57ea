"""The README's main job: record a realistic trading session through the
storage adapter, then show what the log holds.

    python -m eventstore.demo [--dsn DSN] [--session ID | --new-session]

The session is generated from a seeded random generator: the same session id
always produces the same trades and audit events, with the same ids, so the
adapter's idempotency keys (``trade:<id>``, ``audit:<id>``) make a re-run
record nothing new. The schema must be deployed first
(``eventstore db deploy``; ``make demo`` does both).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec

from .adapter import StorageAdapter, audit_stream, portfolio_stream
from .errors import EventStoreError, StorageUnavailable, ValidationError
from .events import AppendResult
from .schemas import AuditEvent, Trade
from .settings import Settings
from .store import EventStore

__all__ = ["Session", "generate_session", "main"]

DSN_ENV: Final = "EVENTSTORE_DSN"
DEFAULT_DSN: Final = "postgresql://root@127.0.0.1:5432/utcp"
DEFAULT_SESSION: Final = "demo"

#: The trading day the demo records: a Monday, New York time (EST, UTC-5).
TRADING_DAY: Final = dt.date(2025, 11, 24)
NEW_YORK: Final = dt.timezone(dt.timedelta(hours=-5), "EST")
OPEN: Final = dt.datetime.combine(TRADING_DAY, dt.time(9, 30), NEW_YORK)
SESSION_SECONDS: Final = 6.5 * 3600
DECISION_POINTS: Final = 150

CENT: Final = Decimal("0.01")
#: symbol → (opening price, lot size, crypto?)
SYMBOLS: Final[dict[str, tuple[Decimal, Decimal, bool]]] = {
    "AAPL": (Decimal("228.50"), Decimal(5), False),
    "MSFT": (Decimal("418.30"), Decimal(5), False),
    "NVDA": (Decimal("142.80"), Decimal(10), False),
    "AMZN": (Decimal("197.10"), Decimal(5), False),
    "SPY": (Decimal("597.40"), Decimal(5), False),
    "BTC-USD": (Decimal("96250.00"), Decimal("0.0025"), True),
    "ETH-USD": (Decimal("3345.00"), Decimal("0.05"), True),
}


@dataclass(frozen=True)
class Portfolio:
    name: str
    strategy: str
    symbols: tuple[str, ...]
    can_short: bool


PORTFOLIOS: Final = (
    Portfolio("growth", "momentum-v3", ("AAPL", "MSFT", "NVDA", "AMZN"), can_short=False),
    Portfolio("macro", "macro-rv-2", ("SPY", "NVDA", "BTC-USD", "ETH-USD"), can_short=True),
    Portfolio("income", "mean-revert-1", ("AAPL", "MSFT", "SPY"), can_short=False),
)


@dataclass
class Session:
    """One generated trading session: what the demo records, in order."""

    session_id: str
    portfolio_ids: dict[str, str]
    records: list[Trade | AuditEvent] = field(default_factory=list)

    @property
    def trades(self) -> list[Trade]:
        return [r for r in self.records if isinstance(r, Trade)]

    @property
    def audit_events(self) -> list[AuditEvent]:
        return [r for r in self.records if isinstance(r, AuditEvent)]


def _check_session_id(session_id: str) -> str:
    if (
        not session_id
        or len(session_id) > 64
        or not all(c.isalnum() or c in "-_." for c in session_id)
    ):
        raise ValidationError(
            f"session id {session_id!r}: 1 to 64 letters, digits, '-', '_' or '.'",
            field="session",
        )
    return session_id


def _fees(quantity: Decimal, price: Decimal, crypto: bool) -> Decimal:
    if crypto:  # 10 bp of notional
        return (quantity * price * Decimal("0.001")).quantize(CENT)
    return max(Decimal("1.00"), (quantity * Decimal("0.005")).quantize(CENT))


@dataclass(frozen=True)
class _Tick:
    """One decision point: the audit events it produces share these."""

    records: list[Trade | AuditEvent]
    base: str
    symbol: str
    portfolio_id: str
    at: dt.datetime

    def audit(self, kind: str, actor: str, *, ms: int, details: dict[str, Any]) -> None:
        self.records.append(
            AuditEvent(
                id=f"{self.base}/{kind}",
                type=kind,
                symbol=self.symbol,
                actor=actor,
                occurred_at=self.at + dt.timedelta(milliseconds=ms),
                details={"portfolio_id": self.portfolio_id, **details},
            )
        )


def generate_session(session_id: str) -> Session:
    """The session's trades and audit events; the same for the same id."""
    _check_session_id(session_id)
    rng = random.Random(f"utcp-demo:{session_id}")
    portfolio_ids = {p.name: f"{p.name}-{session_id}" for p in PORTFOLIOS}
    session = Session(session_id, portfolio_ids)
    prices = {symbol: spec[0] for symbol, spec in SYMBOLS.items()}
    positions: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    offsets = sorted(rng.randrange(int(SESSION_SECONDS * 1000)) for _ in range(DECISION_POINTS))
    trade_no = 0

    def at(start: dt.datetime, ms: int) -> dt.datetime:
        return start + dt.timedelta(milliseconds=ms)

    for tick, offset_ms in enumerate(offsets, 1):
        portfolio = rng.choice(PORTFOLIOS)
        pid = portfolio_ids[portfolio.name]
        symbol = rng.choice(portfolio.symbols)
        _, lot, crypto = SYMBOLS[symbol]
        # A random walk per symbol, a few basis points per step.
        drift = Decimal(str(round(rng.gauss(0, 0.0025), 6)))
        prices[symbol] = (prices[symbol] * (1 + drift)).quantize(CENT)
        price = prices[symbol]
        t0 = at(OPEN, offset_ms)
        base = f"{session_id}/{tick:04d}"
        direction = rng.choice(("long", "short"))
        strength = Decimal(rng.randint(35, 99)) / 100
        held = positions[(pid, symbol)]

        tick_info = _Tick(session.records, base, symbol, pid, t0)
        tick_info.audit(
            "SignalGenerated",
            f"strategy:{portfolio.strategy}",
            ms=0,
            details={"direction": direction, "strength": strength, "reference_price": price},
        )
        quantity = lot * rng.randint(1, 20)
        if strength < Decimal("0.55"):
            action, reason = "hold", f"signal strength {strength} below threshold 0.55"
        elif direction == "long":
            action, reason = "buy", "momentum confirmed" if held >= 0 else "cover short"
        elif held > 0:
            action, reason = "sell", "reduce long"
            quantity = min(quantity, held)
        elif portfolio.can_short:
            action, reason = "sell", "open short" if held == 0 else "add to short"
        else:
            action, reason = "hold", "short signal, no position, shorting not allowed"
        tick_info.audit(
            "DecisionMade",
            "assistant",
            ms=120,
            details={
                "action": action,
                "reason": reason,
                "signal_id": f"{base}/SignalGenerated",
                "position_before": held,
                **({"quantity": quantity} if action != "hold" else {}),
            },
        )
        if action == "hold":
            continue
        after = held + quantity if action == "buy" else held - quantity
        exposure = (abs(after) * price).quantize(CENT)
        limit = Decimal(250_000) if crypto else Decimal(150_000)
        if exposure > limit:
            tick_info.audit(
                "RiskCheckFailed",
                "risk-engine",
                ms=260,
                details={"check": "position-limit", "exposure_after": exposure, "limit": limit},
            )
            continue
        tick_info.audit(
            "RiskCheckPassed",
            "risk-engine",
            ms=260,
            details={"check": "position-limit", "exposure_after": exposure, "limit": limit},
        )
        trade_no += 1
        order_id = f"{session_id}-O{trade_no:04d}"
        slippage = Decimal(rng.randint(-8, 8)) / 10_000
        fill = (price * (1 + slippage)).quantize(CENT)
        tick_info.audit(
            "OrderPlaced",
            "oms",
            ms=400,
            details={
                "order_id": order_id,
                "side": action,
                "quantity": quantity,
                "limit_price": price,
                "venue": "COINBASE" if crypto else rng.choice(("NASDAQ", "NYSE", "IEX")),
            },
        )
        session.records.append(
            Trade(
                trade_id=f"{session_id}-T{trade_no:04d}",
                portfolio_id=pid,
                symbol=symbol,
                side="buy" if action == "buy" else "sell",
                quantity=quantity,
                price=fill,
                fees=_fees(quantity, fill, crypto),
                executed_at=at(t0, 400 + rng.randint(150, 2500)),
                order_id=order_id,
            )
        )
        positions[(pid, symbol)] = after
    return session


# -- recording and reporting --------------------------------------------------


def record(adapter: StorageAdapter, session: Session) -> tuple[int, int, AppendResult | None]:
    """Save every record; (new, already recorded, the first append's result)."""
    new = duplicates = 0
    first: AppendResult | None = None
    for item in session.records:
        if isinstance(item, Trade):
            result = adapter.save_trade(item)
        else:
            result = adapter.save_audit_event(item)
        first = first or result
        if result.duplicate:
            duplicates += 1
        else:
            new += 1
    return new, duplicates, first


def _fmt(value: Decimal) -> str:
    return f"{value.normalize():,f}"


def _print_portfolios(adapter: StorageAdapter, session: Session) -> None:
    for portfolio in PORTFOLIOS:
        pid = session.portfolio_ids[portfolio.name]
        trades = adapter.list_trades(portfolio_id=pid)
        bought: dict[str, Decimal] = defaultdict(Decimal)
        sold: dict[str, Decimal] = defaultdict(Decimal)
        cash = Decimal(0)
        for trade in trades:
            notional = trade.quantity * trade.price
            if trade.side == "buy":
                bought[trade.symbol] += trade.quantity
                cash -= notional + trade.fees
            else:
                sold[trade.symbol] += trade.quantity
                cash += notional - trade.fees
        kind = "long/short" if portfolio.can_short else "long only"
        print(
            f"\nportfolio {pid} ({portfolio.strategy}, {kind}): {len(trades)} trades, "
            f"net cash flow {cash:,.2f} USD"
        )
        print(f"  {'symbol':<9}{'bought':>12}{'sold':>12}{'net':>12}")
        for symbol in sorted(bought.keys() | sold.keys()):
            net = bought[symbol] - sold[symbol]
            note = "  short" if net < 0 else ""
            print(
                f"  {symbol:<9}{_fmt(bought[symbol]):>12}{_fmt(sold[symbol]):>12}"
                f"{_fmt(net):>12}{note}"
            )


def _print_last_audit(adapter: StorageAdapter, session: Session, count: int = 10) -> None:
    last = session.audit_events[-count:]
    wanted = {e.id for e in last}
    until = last[-1].occurred_at + dt.timedelta(microseconds=1)
    found = [
        e
        for e in adapter.list_audit_events(since=last[0].occurred_at, until=until)
        if e.id in wanted
    ]
    print(f"\nlast {len(found)} audit events (list_audit_events):")
    for event in found:
        details = msgspec.json.encode(event.details).decode()
        line = (
            f"  {event.occurred_at.strftime('%H:%M:%S.%f')[:-3]}  {event.symbol:<8} "
            f"{event.type:<16} {event.actor:<24} {details}"
        )
        print(line if len(line) <= 160 else line[:159] + "…")


def _last_checkpoint(store: EventStore, first: AppendResult | None) -> str | None:
    """The global log's last checkpoint, paging from this session's first event."""
    checkpoint: str | None = None
    if first is not None:
        head = store.read_stream(first.stream_id, from_version=first.first_version, limit=1)
        checkpoint = head[0].checkpoint if head else None
    while True:
        page = store.read_all(after=checkpoint, limit=1000)
        if not page:
            return checkpoint
        checkpoint = page[-1].checkpoint


def run(dsn: str, session_id: str) -> int:
    session = generate_session(session_id)
    started = time.perf_counter()
    settings = Settings.from_env(pool_min_size=1, pool_max_size=2)
    try:
        store = EventStore.open(dsn, settings)
    except StorageUnavailable as exc:
        if "does not exist" in exc.message:  # the database is not there
            raise StorageUnavailable(
                f"{exc.message}: create it and deploy the schema with "
                "`eventstore db deploy` (same --dsn)",
                operation="open",
                sqlstate=exc.sqlstate,
            ) from exc
        raise
    with store:
        adapter = StorageAdapter(store)
        new, duplicates, first = record(adapter, session)
        elapsed = time.perf_counter() - started
        trades, audits = len(session.trades), len(session.audit_events)
        print(
            f"session {session_id!r}, trading day {TRADING_DAY} (New York): "
            f"{len(session.records)} events ({trades} trades, {audits} audit events): "
            f"{new} new, {duplicates} already recorded, in {elapsed:.1f} s"
        )
        _print_portfolios(adapter, session)
        _print_last_audit(adapter, session)

        streams = sorted(
            {portfolio_stream(pid) for pid in session.portfolio_ids.values()}
            | {audit_stream(e.symbol) for e in session.audit_events}
        )
        checked = problems = 0
        for stream_id in streams:
            report = store.verify_chain(stream_id)
            checked += report.events_checked
            problems += len(report.problems)
            for problem in report.problems:
                print(
                    f"  PROBLEM {problem.stream_id} v{problem.stream_version} "
                    f"(position {problem.position}): {problem.problem}"
                )
        status = store.status()
        print(
            f"\nlog: {status.events} events in {status.streams} streams; "
            f"hash chains of the session's {len(streams)} streams "
            f"({checked} events): " + ("ok" if problems == 0 else f"{problems} PROBLEMS")
        )
        print(f"global log: last checkpoint {_last_checkpoint(store, first)}")
    return 0 if problems == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eventstore.demo",
        description=(
            "Record a realistic trading session (three portfolios, stocks and crypto, "
            "buys, sells and shorts, with the assistant's signals, decisions, risk checks "
            "and orders) through StorageAdapter, then print what the log holds. The schema "
            "must be deployed first: `eventstore db deploy`."
        ),
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help=f"PostgreSQL connection string (default: ${DSN_ENV}, else {DEFAULT_DSN})",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--session",
        default=DEFAULT_SESSION,
        metavar="ID",
        help=(
            "the session to record (default: %(default)r). A session is generated from its "
            "id, with the same ids every time, so re-running with the same id records "
            "nothing new and reports every event as already recorded"
        ),
    )
    which.add_argument(
        "--new-session",
        action="store_true",
        help="record a fresh session under a new random id",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dsn = args.dsn or os.environ.get(DSN_ENV) or DEFAULT_DSN
    session_id = uuid.uuid4().hex[:12] if args.new_session else args.session
    try:
        return run(dsn, session_id)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except EventStoreError as exc:
        print(f"eventstore.demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
