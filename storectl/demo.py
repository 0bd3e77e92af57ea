"""The README's main job: record a week of trading through the storage
adapter, catch the trading projection up, and show the portfolios.

    python -m storectl.demo [--dsn DSN] [--projector-dsn DSN]
                              [--session ID | --new-session] [--standby-timeout S]

1. **Record.** A trading week (2025-11-17 to 2025-11-21, New York hours) is
   generated from a seeded random generator: four portfolios (two long
   only, two long/short, one in EUR), twelve symbols (US stocks, European
   stocks, crypto), the opening deposits, top-ups and withdrawals, about a
   thousand decision points whose signals, decisions, risk checks and orders
   are audit events, the trades they lead to (longs, shorts, flips through
   zero), and a few cancellations of earlier trades. Everything goes
   through :class:`~eventstore.StorageAdapter` (``open_portfolio``,
   ``deposit_cash``, ``withdraw_cash``, ``save_trade``, ``cancel_trade``,
   ``save_audit_event``), one event per append: close to 4,000 events. The
   same session id always gives the same events with the same ids, so the
   adapter's idempotency keys make a re-run record nothing new.
2. **Project.** :class:`projections.ProjectionRunner` takes the trading
   projection's lease (if another worker holds it, the demo waits as a
   standby for ``--standby-timeout`` seconds, then gives up with an error)
   and catches up with the whole log, with a progress display on stderr.
3. **Show.** The portfolios and positions as projected (``get_portfolio``,
   ``get_positions``: the ``utcp.portfolios`` and ``utcp.positions``
   tables), then one summary line: events recorded, events projected, the
   hash chains (``verify_chain``) and an anchor of the log (``anchor``).

Roles: the events are appended and read through ``--dsn``, which needs
``utcp_writer`` (the least-privileged application role), and
``utcp_operator`` to take the anchor (without it the summary says so); the projection
writes its tables through ``--projector-dsn`` (default: the same DSN), which
needs ``utcp_projector``. ``make demo`` uses one DSN for both, as the local
superuser. The schema must be deployed first (``eventstore db deploy``;
``make demo`` does both).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, TextIO

import msgspec
import psycopg

from eventstore import Anchor, ChainReport, EventStore
from eventstore.errors import EventStoreError, StorageError, StorageUnavailable, ValidationError
from eventstore.settings import Settings, redact
from projections import ProjectionError, ProjectionRunner
from projections.models import Portfolio, Position
from projections.queries import get_portfolio, get_positions
from projections.rules import cash_effect
from projections.sql import READ_CHECKPOINT
from storectl.service import ServiceSettings, build_app, running
from storectl.service.client import ToolClient
from storectl.service.keys import add_key, revoke_key
from trading import trading_registry
from trading.adapter import StorageAdapter, audit_stream
from trading.events import (
    AuditEvent,
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
)

__all__ = [
    "PORTFOLIOS",
    "DemoError",
    "Session",
    "format_money",
    "format_price",
    "format_quantity",
    "generate_session",
    "main",
]

DSN_ENV: Final = "EVENTSTORE_DSN"
DEFAULT_DSN: Final = "postgresql://root@127.0.0.1:5432/utcp"
DEFAULT_SESSION: Final = "demo"
DEFAULT_STANDBY_TIMEOUT: Final = 10.0
#: How long the demo waits for older transactions (other sessions') to end
#: before it projects and anchors what it recorded.
HORIZON_WAIT: Final = 60.0

#: The trading week the demo records: Monday to Friday, New York time (EST).
TRADING_DAYS: Final = tuple(dt.date(2025, 11, 17) + dt.timedelta(days=d) for d in range(5))
NEW_YORK: Final = dt.timezone(dt.timedelta(hours=-5), "EST")
OPEN_TIME: Final = dt.time(9, 30)
SESSION_MS: Final = int(6.5 * 3600 * 1000)
DECISIONS_PER_DAY: Final = 190
CANCELLATIONS: Final = 12

CENT: Final = Decimal("0.01")
ZERO: Final = Decimal(0)
#: A signal at least this strong is acted on; at FLIP strength a long/short
#: portfolio turns a position round instead of only closing it.
THRESHOLD: Final = Decimal("0.55")
FLIP: Final = Decimal("0.85")

Record = PortfolioOpened | CashDeposited | CashWithdrawn | Trade | TradeCancelled | AuditEvent


class DemoError(Exception):
    """The demo cannot go on (printed as one line, exit status 1)."""


@dataclass(frozen=True)
class Instrument:
    symbol: str
    price: Decimal  # Monday's opening price, in the portfolio's currency
    lot: Decimal
    market: str  # "us", "eu" or "crypto"


INSTRUMENTS: Final = {
    i.symbol: i
    for i in (
        Instrument("AAPL", Decimal("228.50"), Decimal(5), "us"),
        Instrument("MSFT", Decimal("418.30"), Decimal(5), "us"),
        Instrument("NVDA", Decimal("142.80"), Decimal(10), "us"),
        Instrument("AMZN", Decimal("197.10"), Decimal(5), "us"),
        Instrument("SPY", Decimal("597.40"), Decimal(5), "us"),
        Instrument("QQQ", Decimal("505.20"), Decimal(5), "us"),
        Instrument("BTC-USD", Decimal("96250.00"), Decimal("0.0025"), "crypto"),
        Instrument("ETH-USD", Decimal("3345.00"), Decimal("0.05"), "crypto"),
        Instrument("SOL-USD", Decimal("241.60"), Decimal("0.5"), "crypto"),
        Instrument("SAP.DE", Decimal("241.35"), Decimal(5), "eu"),
        Instrument("ASML.AS", Decimal("652.80"), Decimal(2), "eu"),
        Instrument("MC.PA", Decimal("598.20"), Decimal(2), "eu"),
    )
}
VENUES: Final = {
    "us": ("NASDAQ", "NYSE", "IEX"),
    "eu": ("XETRA", "EURONEXT"),
    "crypto": ("COINBASE",),
}


@dataclass(frozen=True)
class PortfolioSpec:
    key: str  # the portfolio id is <session>-<key>
    name: str
    currency: str
    strategy: str
    symbols: tuple[str, ...]
    can_short: bool
    deposit: Decimal  # Monday's opening deposit
    limit: Decimal  # largest exposure per position, in the portfolio's currency


PORTFOLIOS: Final = (
    PortfolioSpec(
        "growth",
        "Growth equities",
        "USD",
        "momentum-v3",
        ("AAPL", "MSFT", "NVDA", "AMZN"),
        can_short=False,
        deposit=Decimal(500_000),
        limit=Decimal(150_000),
    ),
    PortfolioSpec(
        "macro",
        "Global macro",
        "USD",
        "macro-rv-2",
        ("SPY", "QQQ", "NVDA", "BTC-USD", "ETH-USD", "SOL-USD"),
        can_short=True,
        deposit=Decimal(750_000),
        limit=Decimal(200_000),
    ),
    PortfolioSpec(
        "income",
        "Income",
        "USD",
        "mean-revert-1",
        ("AAPL", "MSFT", "SPY"),
        can_short=False,
        deposit=Decimal(300_000),
        limit=Decimal(100_000),
    ),
    PortfolioSpec(
        "europe",
        "European pairs",
        "EUR",
        "euro-pairs-1",
        ("SAP.DE", "ASML.AS", "MC.PA"),
        can_short=True,
        deposit=Decimal(400_000),
        limit=Decimal(120_000),
    ),
)

CANCEL_REASONS: Final = (
    "busted by the venue: clearly erroneous execution",
    "booked in error: duplicate fill report from the broker",
    "broker correction: allocated to the wrong account",
)


@dataclass
class Session:
    """One generated trading session: what the demo records, in order."""

    session_id: str
    portfolio_ids: dict[str, str]  # spec key -> portfolio id
    records: list[Record] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]

    @property
    def trades(self) -> list[Trade]:
        return self.of(Trade)

    @property
    def audit_events(self) -> list[AuditEvent]:
        return self.of(AuditEvent)

    @property
    def cancellations(self) -> list[TradeCancelled]:
        return self.of(TradeCancelled)

    def counts(self) -> dict[str, int]:
        return {
            "trades": len(self.trades),
            "cancellations": len(self.cancellations),
            "deposits": len(self.of(CashDeposited)),
            "withdrawals": len(self.of(CashWithdrawn)),
            "audit events": len(self.audit_events),
        }


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


def _fees(instrument: Instrument, quantity: Decimal, price: Decimal) -> Decimal:
    notional = quantity * price
    if instrument.market == "crypto":  # 10 bp of notional
        return (notional * Decimal("0.001")).quantize(CENT)
    if instrument.market == "eu":  # 5 bp, at least 2.00
        return max(Decimal("2.00"), (notional * Decimal("0.0005")).quantize(CENT))
    return max(Decimal("1.00"), (quantity * Decimal("0.005")).quantize(CENT))  # per share


def _signed(trade: Trade) -> Decimal:
    return trade.quantity if trade.side == "buy" else -trade.quantity


class _Book:
    """What the generator knows of each portfolio, to decide realistically:
    cash and the live (not cancelled) trades, by the rules of docs/design.md §5."""

    def __init__(self) -> None:
        self.cash: dict[str, Decimal] = {}
        self.live: dict[str, list[Trade]] = {}  # portfolio id -> trades, in order

    def held(self, pid: str, symbol: str) -> Decimal:
        return sum((_signed(t) for t in self.live[pid] if t.symbol == symbol), ZERO)

    def execute(self, trade: Trade) -> None:
        self.live[trade.portfolio_id].append(trade)
        self.cash[trade.portfolio_id] += cash_effect(
            trade.side, trade.quantity, trade.price, trade.fees
        )

    def can_cancel(self, trade: Trade, long_only: bool) -> bool:
        """A long-only portfolio never goes short or overdrawn, even in hindsight."""
        if not long_only:
            return True
        reversed_cash = self.cash[trade.portfolio_id] - cash_effect(
            trade.side, trade.quantity, trade.price, trade.fees
        )
        if reversed_cash < 0:
            return False
        running = ZERO
        for other in self.live[trade.portfolio_id]:
            if other.symbol == trade.symbol and other is not trade:
                running += _signed(other)
                if running < 0:
                    return False
        return True

    def cancel(self, trade: Trade) -> None:
        self.live[trade.portfolio_id].remove(trade)
        self.cash[trade.portfolio_id] -= cash_effect(
            trade.side, trade.quantity, trade.price, trade.fees
        )


class _Generator:
    def __init__(self, session_id: str) -> None:
        self.sid = session_id
        self.rng = random.Random(f"utcp-demo-v2:{session_id}")
        self.session = Session(session_id, {p.key: f"{session_id}-{p.key}" for p in PORTFOLIOS})
        self.book = _Book()
        self.prices = {s: i.price for s, i in INSTRUMENTS.items()}
        self.venues: dict[str, str] = {}  # trade id -> venue
        self.trade_no = 0
        self.tick_no = 0

    def add(self, record: Record) -> None:
        self.session.records.append(record)

    def audit(
        self, tick: str, kind: str, symbol: str, actor: str, at: dt.datetime, **details: Any
    ) -> None:
        self.add(
            AuditEvent(
                id=f"{tick}/{kind}",
                type=kind,
                symbol=symbol,
                actor=actor,
                occurred_at=at,
                details=details,
            )
        )

    def run(self) -> Session:
        rng = self.rng
        for day_no, day in enumerate(TRADING_DAYS):
            open_at = dt.datetime.combine(day, OPEN_TIME, NEW_YORK)
            self.start_of_day(day_no, open_at)
            offsets = sorted(rng.randrange(SESSION_MS) for _ in range(DECISIONS_PER_DAY))
            cancel_at = set(rng.sample(range(20, DECISIONS_PER_DAY), CANCELLATIONS // 5 + 1))
            for n, offset in enumerate(offsets):
                at = open_at + dt.timedelta(milliseconds=offset)
                self.decide(at)
                if n in cancel_at and len(self.session.cancellations) < CANCELLATIONS:
                    self.cancel_one(at + dt.timedelta(seconds=rng.randint(5, 90)))
            self.end_of_day(day_no, open_at + dt.timedelta(milliseconds=SESSION_MS))
        return self.session

    def start_of_day(self, day_no: int, open_at: dt.datetime) -> None:
        for spec in PORTFOLIOS:
            pid = self.session.portfolio_ids[spec.key]
            if day_no == 0:
                self.add(
                    PortfolioOpened(
                        portfolio_id=pid,
                        name=spec.name,
                        base_currency=spec.currency,
                        opened_at=open_at - dt.timedelta(hours=1),
                    )
                )
                self.book.cash[pid] = ZERO
                self.book.live[pid] = []
                amount = spec.deposit
            elif self.rng.random() < 0.3:  # a top-up
                amount = Decimal(self.rng.randint(2, 10) * 5_000)
            else:
                continue
            self.add(
                CashDeposited(
                    deposit_id=f"{pid}-D{day_no + 1}",
                    portfolio_id=pid,
                    amount=amount,
                    occurred_at=open_at - dt.timedelta(minutes=30),
                )
            )
            self.book.cash[pid] += amount

    def end_of_day(self, day_no: int, close_at: dt.datetime) -> None:
        for spec in PORTFOLIOS:
            pid = self.session.portfolio_ids[spec.key]
            cash = self.book.cash[pid]
            if spec.key == "income" and day_no == len(TRADING_DAYS) - 1:
                amount = (spec.deposit * Decimal("0.01")).quantize(CENT)  # weekly payout
            elif self.rng.random() < 0.15:
                amount = (cash * Decimal(self.rng.randint(2, 5)) / 100).quantize(Decimal(1000))
            else:
                continue
            if amount <= 0 or amount > cash:
                continue
            self.add(
                CashWithdrawn(
                    withdrawal_id=f"{pid}-W{day_no + 1}",
                    portfolio_id=pid,
                    amount=amount,
                    occurred_at=close_at + dt.timedelta(minutes=15),
                )
            )
            self.book.cash[pid] -= amount

    def decide(self, t0: dt.datetime) -> None:
        rng = self.rng
        self.tick_no += 1
        spec = rng.choice(PORTFOLIOS)
        pid = self.session.portfolio_ids[spec.key]
        symbol = rng.choice(spec.symbols)
        instrument = INSTRUMENTS[symbol]
        # A random walk per symbol, a few basis points per step.
        drift = Decimal(str(round(rng.gauss(0, 0.0025), 6)))
        self.prices[symbol] = price = (self.prices[symbol] * (1 + drift)).quantize(CENT)
        tick = f"{self.sid}/{self.tick_no:05d}"
        direction = rng.choice(("long", "short"))
        strength = Decimal(rng.randint(35, 99)) / 100
        held = self.book.held(pid, symbol)
        ms = dt.timedelta(milliseconds=1)
        self.audit(
            tick,
            "SignalGenerated",
            symbol,
            f"strategy:{spec.strategy}",
            t0,
            portfolio_id=pid,
            direction=direction,
            strength=strength,
            reference_price=price,
        )
        quantity = instrument.lot * rng.randint(1, 20)
        flip = spec.can_short and strength >= FLIP
        side = "buy"
        if strength < THRESHOLD:
            action, reason = "hold", f"signal strength {strength} below threshold {THRESHOLD}"
        elif direction == "long" and held >= 0:
            action, reason = "buy", "open long" if held == 0 else "add to long"
        elif direction == "long":
            action = "buy"
            if flip:
                reason, quantity = "flip to long", -held + quantity
            else:
                reason, quantity = "cover short", min(quantity, -held)
        elif held > 0:
            action, side = "sell", "sell"
            if flip:
                reason, quantity = "flip to short", held + quantity
            else:
                reason, quantity = "reduce long", min(quantity, held)
        elif spec.can_short:
            action, side = "sell", "sell"
            reason = "open short" if held == 0 else "add to short"
        else:
            action, reason = "hold", "short signal, no position, shorting not allowed"
        self.audit(
            tick,
            "DecisionMade",
            symbol,
            "assistant",
            t0 + 120 * ms,
            portfolio_id=pid,
            action=action,
            reason=reason,
            signal_id=f"{tick}/SignalGenerated",
            position_before=held,
            **({"quantity": quantity} if action != "hold" else {}),
        )
        if action == "hold":
            return
        after = held + quantity if side == "buy" else held - quantity
        exposure = (abs(after) * price).quantize(CENT)
        fill = (price * (1 + Decimal(rng.randint(-8, 8)) / 10_000)).quantize(CENT)
        fees = _fees(instrument, quantity, fill)
        check: dict[str, Any] = {"portfolio_id": pid, "exposure_after": exposure}
        if exposure > spec.limit and abs(after) > abs(held):
            check.update(check="position-limit", limit=spec.limit)
            self.audit(tick, "RiskCheckFailed", symbol, "risk-engine", t0 + 260 * ms, **check)
            return
        cost = -cash_effect("buy", quantity, fill, fees)
        if not spec.can_short and side == "buy" and cost > self.book.cash[pid]:
            check.update(check="buying-power", cost=cost, cash=self.book.cash[pid])
            self.audit(tick, "RiskCheckFailed", symbol, "risk-engine", t0 + 260 * ms, **check)
            return
        check.update(check="position-limit", limit=spec.limit)
        self.audit(tick, "RiskCheckPassed", symbol, "risk-engine", t0 + 260 * ms, **check)
        self.trade_no += 1
        order_id = f"{pid}-O{self.trade_no:05d}"
        venue = rng.choice(VENUES[instrument.market])
        self.audit(
            tick,
            "OrderPlaced",
            symbol,
            "oms",
            t0 + 400 * ms,
            portfolio_id=pid,
            order_id=order_id,
            side=side,
            quantity=quantity,
            limit_price=price,
            venue=venue,
        )
        trade = Trade(
            trade_id=f"{pid}-T{self.trade_no:05d}",
            portfolio_id=pid,
            symbol=symbol,
            side="buy" if side == "buy" else "sell",
            quantity=quantity,
            price=fill,
            fees=fees,
            executed_at=t0 + (400 + rng.randint(150, 2500)) * ms,
            order_id=order_id,
        )
        self.venues[trade.trade_id] = venue
        self.add(trade)
        self.book.execute(trade)

    def cancel_one(self, at: dt.datetime) -> None:
        """Cancel one of a portfolio's recent trades (one that is still live)."""
        rng = self.rng
        spec = rng.choice(PORTFOLIOS)
        pid = self.session.portfolio_ids[spec.key]
        candidates = self.book.live[pid][-30:]
        rng.shuffle(candidates)
        for trade in candidates:
            if self.book.can_cancel(trade, long_only=not spec.can_short):
                break
        else:
            return
        reason = rng.choice(CANCEL_REASONS)
        self.audit(
            f"{self.sid}/{trade.trade_id}",
            "TradeBustReceived",
            trade.symbol,
            f"venue:{self.venues[trade.trade_id]}",
            at,
            portfolio_id=pid,
            trade_id=trade.trade_id,
            order_id=trade.order_id,
            reason=reason,
        )
        self.add(
            TradeCancelled(
                trade_id=trade.trade_id,
                portfolio_id=pid,
                reason=reason,
                occurred_at=at + dt.timedelta(milliseconds=300),
            )
        )
        self.book.cancel(trade)


def generate_session(session_id: str) -> Session:
    """The session's events, in the order they are recorded; the same for
    the same id."""
    return _Generator(_check_session_id(session_id)).run()


# -- progress -------------------------------------------------------------------


class Progress:
    """Progress of one phase on ``out``: on a terminal, one line redrawn in
    place (a bar, the count and events/s); otherwise a line at each quarter
    and one at the end."""

    WIDTH: Final = 28

    def __init__(self, label: str, total: int, out: TextIO) -> None:
        self.label = label
        self.total = max(total, 0)
        self.out = out
        self.tty = out.isatty()
        self.done = 0
        self.started = time.perf_counter()
        self.drawn = 0.0
        self.quarter = 0

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, count: int) -> None:
        self.done += count
        self.total = max(self.total, self.done)
        now = time.perf_counter()
        if self.tty:
            if now - self.drawn >= 0.1:
                self.drawn = now
                self.out.write("\r" + self.bar() + "\x1b[K")
                self.out.flush()
        elif self.total:
            quarter = 4 * self.done // self.total
            if quarter > self.quarter and quarter < 4:
                self.quarter = quarter
                self.out.write(
                    f"{self.label}: {self.done:,}/{self.total:,} events "
                    f"({25 * quarter}%), {self.rate():,.0f} events/s\n"
                )
                self.out.flush()

    def bar(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = round(share * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (
            f"{self.label} [{bar}] {self.done:,}/{self.total:,} events "
            f"{100 * share:3.0f}%  {self.rate():,.0f} events/s"
        )

    def finish(self) -> float:
        elapsed = time.perf_counter() - self.started
        line = f"{self.label}: {self.done:,} events in {elapsed:.1f} s"
        if self.done:
            line += f" ({self.rate():,.0f} events/s)"
        else:
            line += " (nothing to do)"
        self.out.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.out.flush()
        return elapsed


# -- recording ------------------------------------------------------------------


#: Each record's tool: the service's name for what StorageAdapter does.
_TOOLS: Final[dict[type[Any], tuple[str, str]]] = {
    Trade: ("trading.record_trade", "trade"),
    PortfolioOpened: ("trading.open_portfolio", "portfolio"),
    CashDeposited: ("trading.deposit_cash", "deposit"),
    CashWithdrawn: ("trading.withdraw_cash", "withdrawal"),
    TradeCancelled: ("trading.cancel_trade", "cancel"),
}


class _Appended(msgspec.Struct):
    duplicate: bool


def _save(client: ToolClient, item: Record) -> bool:
    """Record ``item`` through its tool; True when it was recorded before."""
    if isinstance(item, AuditEvent):
        # as StorageAdapter.save_audit_event: stream audit-<symbol>, one key per event
        body: dict[str, Any] = {
            "stream": audit_stream(item.symbol),
            "events": [{"type": item.type, "data": msgspec.to_builtins(item)}],
            "idempotency_key": f"audit:{item.id}",
        }
        tool = "store.append"
    else:
        tool, field_name = _TOOLS[type(item)]
        body = {field_name: msgspec.to_builtins(item)}
    appended: _Appended = client.call(tool, body, _Appended)
    return appended.duplicate


def _setup_for(order: AuditEvent, signal: AuditEvent, decision: AuditEvent) -> dict[str, Any]:
    """The trade setup the assistant saves before it places ``order``: entry
    at the limit price, a 2 % stop, targets at 1.5 R and 2.5 R, the position
    sized in lots, with the signal it came from (storage.save_trade's input)."""
    details = order.details
    instrument = INSTRUMENTS[order.symbol]
    quantity = Decimal(str(details["quantity"]))
    entry = Decimal(str(details["limit_price"]))
    sign = 1 if details["side"] == "buy" else -1
    risk_per_unit = (entry * Decimal("0.02")).quantize(CENT)
    stop = entry - sign * risk_per_unit
    targets = [entry + sign * risk_per_unit * r for r in (Decimal("1.5"), Decimal("2.5"))]
    return {
        "trade": {
            "id": str(details["order_id"]),
            "symbol": order.symbol,
            "direction": "long" if sign > 0 else "short",
            "entry": float(entry),
            "stop": float(stop),
            "targets": [float(t) for t in targets],
            "eventId": signal.id,
            "strategyId": signal.actor.removeprefix("strategy:"),
            "notes": str(decision.details.get("reason", "")),
            "createdAt": order.occurred_at.isoformat(),
        },
        "risk": {
            "positionSize": int(quantity / instrument.lot),
            "riskPerUnit": float(risk_per_unit),
            "totalRisk": float((risk_per_unit * quantity).quantize(CENT)),
            "rMultiple": 1.5,
        },
        "event": {
            "id": signal.id,
            "symbol": signal.symbol,
            "type": signal.type,
            "time": signal.occurred_at.isoformat(),
            "payload": msgspec.to_builtins(signal.details),
        },
    }


def record(
    client: ToolClient, session: Session, progress: Callable[[int], None] | None = None
) -> tuple[int, int, int]:
    """Save every record, in order, through the service's tools, and a trade
    setup (storage.save_trade, with its risk and signal event) before each
    order; (new, already recorded, setups saved)."""
    new = duplicates = setups = 0
    seen: dict[str, AuditEvent] = {}  # this decision's signal and decision
    for item in session.records:
        if isinstance(item, AuditEvent):
            seen[item.type] = item
            if item.type == "OrderPlaced":
                signal, decision = seen["SignalGenerated"], seen["DecisionMade"]
                client.call("storage.save_trade", _setup_for(item, signal, decision))
                setups += 1
        if _save(client, item):
            duplicates += 1
        else:
            new += 1
        if progress is not None:
            progress(1)
    return new, duplicates, setups


@contextlib.contextmanager
def serving(store: EventStore, dsn: str, err: TextIO) -> Iterator[ToolClient]:
    """The store's service on a loopback port for the run, and a client of
    it with a writer key made for the run (revoked at the end). A role that
    may not make keys (not in utcp_operator) gets a keyless service, which
    binds only to loopback."""
    name = f"demo-{uuid.uuid4().hex[:12]}"
    secret: str | None
    try:
        secret = add_key(dsn, name, "writer")[1]
    except StorageError as exc:
        if exc.sqlstate != "42501":
            raise
        secret = None
    settings = ServiceSettings(
        dsn=dsn,
        host="127.0.0.1",
        port=0,
        no_auth=secret is None,
        key_cache_seconds=300,
        threads=2,
        shutdown_grace=5,
    )
    try:
        with running(build_app(settings, store=store), settings) as url:
            auth = f"key {name!r}" if secret else "no key: this role may not make keys"
            print(f"service: {url}/tools ({auth})", file=err, flush=True)
            with ToolClient(url, secret) as client:
                yield client
    finally:
        if secret is not None:
            with contextlib.suppress(EventStoreError):
                revoke_key(dsn, name)


def settle(store: EventStore, err: TextIO, timeout: float = HORIZON_WAIT) -> None:
    """Wait until every event recorded is behind the readers' horizon, so
    that the projection and the anchor cover the whole session: on a shared
    server another session's open transaction (any database) holds the
    horizon back (docs/design.md §4, "Stalls"). Bounded: after ``timeout`` the
    demo goes on, and says so."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        status = store.status()
        if status.events_behind_horizon == 0:
            return
        if not said:
            print(
                f"waiting for an older transaction to end: {status.events_behind_horizon:,} "
                f"events behind the readers' horizon (backend pid "
                f"{status.oldest_transaction_pid}, role {status.oldest_transaction_role}, "
                f"application {status.oldest_transaction_application!r})",
                file=err,
                flush=True,
            )
            said = True
        if time.monotonic() > deadline:
            print(
                f"still {status.events_behind_horizon:,} events behind the horizon after "
                f"{timeout:g} s: the projection and the anchor will not cover them yet",
                file=err,
                flush=True,
            )
            return
        time.sleep(0.1)


# -- projecting -----------------------------------------------------------------


def _lock_holder(runner: ProjectionRunner) -> str:
    """The live holder of the projection's lease, as " (backend pid N, role …)"."""
    try:
        holders = runner.holders()
    except psycopg.Error:
        return ""
    holder = next((h for h in holders if h.role == "holder"), None)
    if holder is None:
        return ""
    rest = holder.describe().removeprefix(f"pid {holder.pid}")
    return f" (backend pid {holder.pid}{rest})"


def _become_active(runner: ProjectionRunner, timeout: float, say: Callable[[str], None]) -> None:
    now = threading.Event()
    now.set()  # one try, no wait
    if runner.acquire(now):
        return
    holder = _lock_holder(runner)
    say(
        f"another worker is projecting {runner.name!r}{holder}: "
        f"waiting up to {timeout:g} s as a standby"
    )
    give_up = threading.Event()
    timer = threading.Timer(timeout, give_up.set)
    timer.daemon = True
    timer.start()
    try:
        active = runner.acquire(give_up, standby=0.2)
    finally:
        timer.cancel()
    if not active:
        raise DemoError(
            f"another worker still holds the {runner.name!r} projection after {timeout:g} s"
            f"{_lock_holder(runner)}: stop it (or let it finish) and run the demo again; "
            "`eventstore project status` shows it"
        )
    say(f"the other worker is gone: this one is now projecting {runner.name!r}")


def _remaining(store: EventStore, runner: ProjectionRunner) -> int:
    """About how many events the projection has yet to read (for progress)."""
    row = runner.connection.execute(READ_CHECKPOINT, (runner.name,)).fetchone()
    processed = int(row[1]) if row else 0
    return max(store.status().events - processed, 0)


def project(
    store: EventStore, projector_dsn: str, *, standby_timeout: float, err: TextIO
) -> tuple[int, float]:
    """Catch the trading projection up with the log; (events read, seconds)."""

    def say(message: str) -> None:
        print(message, file=err, flush=True)

    runner = ProjectionRunner(store, projector_dsn)
    try:
        _become_active(runner, standby_timeout, say)
        progress = Progress("projecting", _remaining(store, runner), err)
        read = runner.catch_up(
            until=runner.head(), progress=lambda count, _last: progress.advance(count)
        )
        return read, progress.finish()
    except ProjectionError as exc:
        raise DemoError(
            f"{exc}. The log holds an event the trading projection refuses "
            "(see `eventstore project status`): run the demo against a fresh database"
        ) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise DemoError(
            f"the projection tables are missing ({exc.diag.message_primary}): "
            "run `eventstore db deploy` (same --dsn)"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DemoError(
            f"the projector's role may not write the projection tables "
            f"({exc.diag.message_primary}): --projector-dsn must log in as a member "
            "of utcp_projector"
        ) from exc
    except psycopg.Error as exc:
        failure = DemoError(f"projection: {type(exc).__name__}: {redact(str(exc), projector_dsn)}")
        failure.__cause__ = type(exc)(redact(str(exc), projector_dsn))  # libpq may quote the DSN
    finally:
        runner.release()
    raise failure


# -- showing --------------------------------------------------------------------


def format_money(value: Decimal) -> str:
    """Two decimals, thousands separated (display only)."""
    return f"{value:,.2f}"


def format_price(value: Decimal) -> str:
    """Four decimals, thousands separated (display only)."""
    return f"{value:,.4f}"


def format_quantity(value: Decimal) -> str:
    """Exact, without trailing zeros, thousands separated, signed."""
    text = f"{value.normalize():,f}"
    return "0" if text in ("-0", "0") else text


def _side(quantity: Decimal) -> str:
    return "long" if quantity > 0 else "SHORT" if quantity < 0 else "flat"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *map(line, rows)]


def portfolio_table(portfolios: Sequence[tuple[Portfolio, list[Position]]]) -> list[str]:
    rows = [
        [
            p.portfolio_id,
            p.name,
            p.base_currency,
            format_money(p.cash),
            format_money(p.realized_pnl),
            format_money(p.fees),
            f"{sum(1 for x in positions if x.quantity != 0)} of {len(positions)}",
        ]
        for p, positions in portfolios
    ]
    headers = ["portfolio", "name", "ccy", "cash", "realized P&L", "fees", "open"]
    return _table(headers, rows, right={3, 4, 5, 6})


def position_table(positions: Sequence[Position]) -> list[str]:
    rows = [
        [
            p.symbol,
            _side(p.quantity),
            format_quantity(p.quantity),
            format_price(p.avg_cost) if p.quantity != 0 else "-",
            format_money(p.realized_pnl),
            format_money(p.fees),
            str(p.trade_count),
        ]
        for p in positions
    ]
    headers = ["symbol", "side", "quantity", "avg cost", "realized P&L", "fees", "trades"]
    return _table(headers, rows, right={2, 3, 4, 5, 6})


def show(adapter: StorageAdapter, session: Session) -> None:
    shown: list[tuple[Portfolio, list[Position]]] = []
    for spec in PORTFOLIOS:
        pid = session.portfolio_ids[spec.key]
        portfolio = get_portfolio(adapter.store, pid)
        if portfolio is None:
            raise DemoError(f"portfolio {pid!r} is not in utcp.portfolios after catching up")
        shown.append((portfolio, get_positions(adapter.store, pid)))
    print("\nportfolios (utcp.portfolios, as projected from the log):")
    for line in portfolio_table(shown):
        print("  " + line)
    for spec, (portfolio, positions) in zip(PORTFOLIOS, shown, strict=True):
        kind = "long/short" if spec.can_short else "long only"
        print(
            f"\n{portfolio.portfolio_id}: {portfolio.name}, {portfolio.base_currency}, "
            f"{kind}, strategy {spec.strategy} (utcp.positions):"
        )
        for line in position_table(positions):
            print("  " + line)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _chain_summary(report: ChainReport) -> str:
    if report.ok:
        return (
            f"verify_chain ok ({report.events_checked:,} events, "
            f"{report.streams_checked:,} streams, {_plural(report.anchors_checked, 'anchor')})"
        )
    return (
        f"verify_chain FAILED ({len(report.problems)} chain problems, "
        f"{len(report.anchor_problems)} anchor problems)"
    )


def _anchor_summary(anchor: Anchor | str | None) -> str:
    if anchor is None:
        return "no anchor (empty log)"
    if isinstance(anchor, str):
        return f"no anchor ({anchor})"
    return (
        f"anchor #{anchor.anchor_id} at {anchor.checkpoint} over {anchor.events:,} events: "
        f"sha256 {anchor.digest.hex()}"
    )


def _take_anchor(store: EventStore) -> Anchor | str | None:
    """An anchor of the log, or why the demo's role may not take one
    (anchors are an operator's act: utcp_operator)."""
    try:
        return store.anchor()
    except StorageError as exc:
        if exc.sqlstate != "42501":
            raise
        return (
            "anchors are taken by operators: run `eventstore anchor` as a member of utcp_operator"
        )


# -- the job --------------------------------------------------------------------


def _open(dsn: str) -> EventStore:
    settings = Settings.from_env(defaults={"pool_min_size": 1, "pool_max_size": 2})
    try:
        return EventStore.open(dsn, settings, registry=trading_registry())
    except StorageUnavailable as exc:
        if "does not exist" in exc.message:  # the database is not there
            raise StorageUnavailable(
                f"{exc.message}: create it and deploy the schema with "
                "`eventstore db deploy` (same --dsn)",
                operation="open",
                sqlstate=exc.sqlstate,
            ) from exc
        raise


def run(
    dsn: str,
    session_id: str,
    *,
    projector_dsn: str | None = None,
    standby_timeout: float = DEFAULT_STANDBY_TIMEOUT,
    err: TextIO | None = None,
) -> int:
    err = err if err is not None else sys.stderr
    session = generate_session(session_id)
    counts = ", ".join(f"{n:,} {what}" for what, n in session.counts().items())
    with _open(dsn) as store, serving(store, dsn, err) as client:
        adapter = StorageAdapter(store)
        print(
            f"session {session_id!r}: trading week {TRADING_DAYS[0]} to {TRADING_DAYS[-1]} "
            f"(New York), {len(PORTFOLIOS)} portfolios, {len(INSTRUMENTS)} symbols: "
            f"{len(session.records):,} events ({counts})",
            flush=True,
        )
        recording = Progress("recording", len(session.records), err)
        new, duplicates, setups = record(client, session, recording.advance)
        recorded_in = recording.finish()
        print(
            f"recorded through the service's tools over HTTP (POST /tools), with "
            f"{setups:,} trade setups saved with their risk and signal events "
            "(storage.save_trade)",
            flush=True,
        )
        settle(store, err)

        projected, projected_in = project(
            store, projector_dsn or dsn, standby_timeout=standby_timeout, err=err
        )
        show(adapter, session)

        anchor = _take_anchor(store)
        report = store.verify_chain()
        for problem in report.problems:
            print(
                f"PROBLEM {problem.stream_id} v{problem.stream_version} "
                f"(position {problem.position}): {problem.problem}"
            )
        for anchor_problem in report.anchor_problems:
            print(f"PROBLEM anchor #{anchor_problem.anchor_id}: {anchor_problem.problem}")
        print(
            f"\nsummary: {new:,} events recorded new, {duplicates:,} already recorded "
            f"({recorded_in:.1f} s); {projected:,} events projected ({projected_in:.1f} s); "
            f"{_chain_summary(report)}; {_anchor_summary(anchor)}"
        )
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m storectl.demo",
        description=(
            "Record a week of trading (four portfolios, US and European stocks and crypto, "
            "deposits and withdrawals, longs, shorts and flips, a few cancelled trades, with "
            "the assistant's signals, decisions, risk checks and orders) through "
            "StorageAdapter, catch the trading projection up, and print the portfolios and "
            "positions. The schema must be deployed first: `eventstore db deploy`."
        ),
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help=(
            f"PostgreSQL connection string for appending and reading; its role needs "
            f"utcp_writer (default: ${DSN_ENV}, else {DEFAULT_DSN})"
        ),
    )
    parser.add_argument(
        "--projector-dsn",
        default=None,
        metavar="DSN",
        help="connection string for the projection worker; its role needs utcp_projector "
        "(default: --dsn)",
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
    parser.add_argument(
        "--standby-timeout",
        type=float,
        default=DEFAULT_STANDBY_TIMEOUT,
        metavar="S",
        help="how long to wait while another worker holds the projection (default: %(default)g)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The runner logs a projection error; the demo reports it once, itself.
    logging.getLogger("projections").addHandler(logging.NullHandler())
    dsn = args.dsn or os.environ.get(DSN_ENV) or DEFAULT_DSN
    session_id = uuid.uuid4().hex[:12] if args.new_session else args.session
    try:
        return run(
            dsn,
            session_id,
            projector_dsn=args.projector_dsn,
            standby_timeout=args.standby_timeout,
        )
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except (EventStoreError, DemoError) as exc:
        print(f"storectl.demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
