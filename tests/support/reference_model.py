"""A plain-Python reference model of the trading rules (DESIGN.md §5,
docs/trading-rules.md), written from the documents, not from projections/.

It is deliberately built differently from the projection: it records the
log (who opened what, which trades happened, which were cancelled, when
each row was last touched) and derives every number at the end, by
folding each (portfolio, symbol)'s *remaining* trades in log order. The
projection updates rows incrementally, batch by batch, and recomputes a
position only on a cancellation; the two must agree exactly.

Arithmetic: every value is exact (a Decimal context that traps any
rounding), except avg_cost, which is the exact quotient (a Fraction)
rounded once, half-to-even, to 12 decimal places.

Input: events in log order, each a :class:`eventstore.StoredEvent` or a
``(type, payload)`` pair (payload: a dict or one of the trading.events
Structs). With StoredEvents the model also checks the stream of each
trading event and fills ``updated_at`` (the ``created_at`` of the last
event that changed the row) and ``event_position``; with pairs those two
columns are left out of the rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import msgspec

from eventstore import StoredEvent
from trading.events import (
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
)

__all__ = [
    "ModelRefusal",
    "Row",
    "avg_cost_rounded",
    "fold_position",
    "reference_model",
]

Row = dict[str, Any]
ModelInput = StoredEvent | tuple[str, Mapping[str, Any] | msgspec.Struct]

#: Every operation outside the avg_cost division must be exact: this
#: context raises instead of rounding.
EXACT: Final = decimal.Context(
    prec=2000, traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation]
)
PLACES: Final = 12
_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "PortfolioOpened": PortfolioOpened,
    "CashDeposited": CashDeposited,
    "CashWithdrawn": CashWithdrawn,
    "TradeExecuted": Trade,
    "TradeCancelled": TradeCancelled,
}


class ModelRefusal(Exception):
    """The log holds something the rules refuse (the projection stops there)."""


def avg_cost_rounded(numerator: Decimal, denominator: Decimal) -> Decimal:
    """The exact quotient rounded half-to-even to 12 decimal places."""
    exact = Fraction(numerator) / Fraction(denominator) * 10**PLACES
    whole, rest = divmod(exact.numerator, exact.denominator)
    twice = 2 * rest
    if twice > exact.denominator or (twice == exact.denominator and whole % 2 == 1):
        whole += 1
    return Decimal(whole).scaleb(-PLACES, context=EXACT)  # exact, in any caller's context


@dataclass
class _Position:
    quantity: Decimal = Decimal(0)
    avg_cost: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    trade_count: int = 0


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def fold_position(fills: Iterable[tuple[str, Decimal, Decimal, Decimal]]) -> _Position:
    """The position after ``(side, quantity, price, fee)`` fills, in order."""
    pos = _Position()
    with decimal.localcontext(EXACT):
        for side, q, price, fee in fills:
            step = q if side == "buy" else -q
            held = pos.quantity
            if held == 0 or _sign(held) == _sign(step):
                # Adding (or opening from flat): the weighted average.
                pos.avg_cost = avg_cost_rounded(abs(held) * pos.avg_cost + q * price, abs(held) + q)
            else:
                closed = min(q, abs(held))
                pos.realized_pnl += closed * (price - pos.avg_cost) * _sign(held)
                after = held + step
                if after == 0:
                    pos.avg_cost = Decimal(0)
                elif _sign(after) != _sign(held):
                    pos.avg_cost = price  # the flip opens the remainder at the price
                # else: still open on the same side, avg_cost unchanged
            pos.quantity = held + step
            pos.fees += fee
            pos.trade_count += 1
    return pos


def _cash_effect(trade: Trade) -> Decimal:
    with decimal.localcontext(EXACT):
        notional = trade.quantity * trade.price
        return -(notional + trade.fees) if trade.side == "buy" else notional - trade.fees


@dataclass
class _Log:
    """What the model remembers while reading the log."""

    opened: dict[str, PortfolioOpened] = field(default_factory=dict)
    cash_moves: dict[str, list[Decimal]] = field(default_factory=dict)
    trades: dict[str, Trade] = field(default_factory=dict)
    trade_order: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    executed_at_position: dict[str, int] = field(default_factory=dict)
    touched: dict[Any, dt.datetime | None] = field(default_factory=dict)
    keys: list[tuple[str, str]] = field(default_factory=list)


def _decode(event: ModelInput) -> tuple[str, msgspec.Struct | None, StoredEvent | None]:
    data: Mapping[str, Any] | msgspec.Struct
    stored: StoredEvent | None
    if isinstance(event, StoredEvent):
        type_, data, stored = event.type, event.data, event
    else:
        (type_, data), stored = event, None
    cls = _TYPES.get(type_)
    if cls is None:
        return type_, None, stored  # audit and other events move nothing
    payload = data if isinstance(data, cls) else msgspec.convert(data, cls, strict=False)
    if stored is not None and stored.stream_id != f"portfolio-{payload.portfolio_id}":  # type: ignore[attr-defined]
        raise ModelRefusal(f"{type_} outside its portfolio stream: {stored.stream_id}")
    return type_, payload, stored


def reference_model(
    events: Iterable[ModelInput],
) -> tuple[dict[str, Row], dict[tuple[str, str], Row], dict[str, Row]]:
    """(trades by trade_id, positions by (portfolio_id, symbol), portfolios
    by portfolio_id) after ``events``, with the columns of utcp.trades,
    utcp.positions and utcp.portfolios."""
    log = _Log()
    kinds: set[bool] = set()
    for event in events:
        kinds.add(isinstance(event, StoredEvent))
        if len(kinds) > 1:
            raise TypeError("give StoredEvents or (type, payload) pairs, not both")
        _, payload, stored = _decode(event)
        if payload is None:
            continue
        at = None if stored is None else stored.created_at
        _read(log, payload, stored, at)
    return _derive(log, with_log_columns=kinds == {True})


def _read(
    log: _Log, payload: msgspec.Struct, stored: StoredEvent | None, at: dt.datetime | None
) -> None:
    if isinstance(payload, PortfolioOpened):
        if payload.portfolio_id in log.opened:
            raise ModelRefusal(f"portfolio {payload.portfolio_id} opened twice")
        log.opened[payload.portfolio_id] = payload
        log.cash_moves[payload.portfolio_id] = []
        log.touched[("portfolio", payload.portfolio_id)] = at
        return
    pid: str = payload.portfolio_id  # type: ignore[attr-defined]
    if pid not in log.opened:
        raise ModelRefusal(f"portfolio {pid} was never opened")
    if isinstance(payload, CashDeposited):
        log.cash_moves[pid].append(payload.amount)
    elif isinstance(payload, CashWithdrawn):
        log.cash_moves[pid].append(payload.amount.copy_negate())  # exact: unary minus rounds
    elif isinstance(payload, Trade):
        if payload.trade_id in log.trades:
            raise ModelRefusal(f"trade {payload.trade_id} executed twice")
        log.trades[payload.trade_id] = payload
        log.trade_order.append(payload.trade_id)
        if stored is not None:
            log.executed_at_position[payload.trade_id] = stored.position
        key = (pid, payload.symbol)
        if key not in log.keys:
            log.keys.append(key)
        log.touched[("trade", payload.trade_id)] = at
        log.touched[("position", key)] = at
    elif isinstance(payload, TradeCancelled):
        trade = log.trades.get(payload.trade_id)
        if trade is None or trade.portfolio_id != pid:
            raise ModelRefusal(f"cancel of unknown trade {payload.trade_id} in {pid}")
        if payload.trade_id in log.cancelled:
            return  # a second cancellation changes nothing, not even updated_at
        log.cancelled.add(payload.trade_id)
        log.touched[("trade", payload.trade_id)] = at
        log.touched[("position", (pid, trade.symbol))] = at
    log.touched[("portfolio", pid)] = at


def _derive(
    log: _Log, *, with_log_columns: bool
) -> tuple[dict[str, Row], dict[tuple[str, str], Row], dict[str, Row]]:
    def stamp(row: Row, what: Any) -> Row:
        if with_log_columns:
            row["updated_at"] = log.touched[what]
        return row

    trades: dict[str, Row] = {}
    for tid in log.trade_order:
        t = log.trades[tid]
        row: Row = {
            "trade_id": tid,
            "portfolio_id": t.portfolio_id,
            "symbol": t.symbol,
            "side": t.side,
            "quantity": t.quantity,
            "price": t.price,
            "fees": t.fees,
            "executed_at": t.executed_at,
            "order_id": t.order_id,
            "status": "cancelled" if tid in log.cancelled else "executed",
        }
        if with_log_columns:
            row["event_position"] = log.executed_at_position[tid]
        trades[tid] = stamp(row, ("trade", tid))

    positions: dict[tuple[str, str], Row] = {}
    for key in log.keys:
        remaining = [
            log.trades[tid]
            for tid in log.trade_order
            if tid not in log.cancelled
            and (log.trades[tid].portfolio_id, log.trades[tid].symbol) == key
        ]
        if not remaining:
            continue  # every trade cancelled: no position at all
        pos = fold_position((t.side, t.quantity, t.price, t.fees) for t in remaining)
        positions[key] = stamp(
            {
                "portfolio_id": key[0],
                "symbol": key[1],
                "quantity": pos.quantity,
                "avg_cost": pos.avg_cost,
                "realized_pnl": pos.realized_pnl,
                "fees": pos.fees,
                "trade_count": pos.trade_count,
            },
            ("position", key),
        )

    portfolios: dict[str, Row] = {}
    with decimal.localcontext(EXACT):
        for pid, opened in log.opened.items():
            remaining = [
                log.trades[tid]
                for tid in log.trade_order
                if tid not in log.cancelled and log.trades[tid].portfolio_id == pid
            ]
            cash = sum(log.cash_moves[pid], Decimal(0)) + sum(
                (_cash_effect(t) for t in remaining), Decimal(0)
            )
            realized = sum(
                (p["realized_pnl"] for (p_id, _), p in positions.items() if p_id == pid),
                Decimal(0),
            )
            fees = sum((t.fees for t in remaining), Decimal(0))
            portfolios[pid] = stamp(
                {
                    "portfolio_id": pid,
                    "name": opened.name,
                    "base_currency": opened.base_currency,
                    "cash": cash,
                    "realized_pnl": realized,
                    "fees": fees,
                    "opened_at": opened.opened_at,
                },
                ("portfolio", pid),
            )
    return trades, positions, portfolios
