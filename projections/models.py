"""The read models' rows: one Struct per table, whose fields are the table's
columns (projections/sql.py derives its column lists from them, and rows
are mapped to them by name, never by position)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

__all__ = ["Portfolio", "Position", "TradeRow", "decimal_text", "plain_decimal", "row_of"]

S = TypeVar("S", bound=msgspec.Struct)


class TradeRow(msgspec.Struct, frozen=True):
    """A row of ``utcp.trades``: a trade as projected, with its status
    ("executed", or "cancelled" once a TradeCancelled undid it)."""

    trade_id: str
    portfolio_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    executed_at: dt.datetime
    order_id: str | None
    status: str
    #: The position of the TradeExecuted event in the log.
    event_position: int
    updated_at: dt.datetime


class Position(msgspec.Struct, frozen=True):
    """A row of ``utcp.positions`` (average cost, signed quantity:
    docs/trading-rules.md)."""

    portfolio_id: str
    symbol: str
    quantity: Decimal
    avg_cost: Decimal
    realized_pnl: Decimal
    fees: Decimal
    trade_count: int
    updated_at: dt.datetime


class Portfolio(msgspec.Struct, frozen=True):
    """A row of ``utcp.portfolios``."""

    portfolio_id: str
    name: str
    base_currency: str
    cash: Decimal
    realized_pnl: Decimal
    fees: Decimal
    opened_at: dt.datetime
    updated_at: dt.datetime


def plain_decimal(value: Decimal) -> Decimal:
    """``value``, the same number, with no trailing zeros after the point
    and no positive exponent (230.500000000000 gives 230.5, 0E-12 gives 0,
    1E+2 gives 100). Exact, whatever the digits (no context, no rounding:
    unlike Decimal.normalize, which rounds to the context's precision and
    writes 1E+2). ``str()`` of a Decimal still writes an exponent below
    1E-6; :func:`decimal_text` never does."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity: nothing to tidy
        return value
    if not any(digits):
        return Decimal(0)
    kept = list(digits)
    while exponent < 0 and kept[-1] == 0:
        kept.pop()
        exponent += 1
    if exponent > 0:
        kept.extend([0] * exponent)
        exponent = 0
    return Decimal((sign, tuple(kept), exponent))


def row_of(cls: type[S], row: dict[str, Any]) -> S:
    """A read model's row (columns by name) as its Struct, decimals plain
    (:func:`plain_decimal`): how the library hands read-model rows out."""
    return cls(**{k: plain_decimal(v) if isinstance(v, Decimal) else v for k, v in row.items()})


def decimal_text(value: Decimal) -> str:
    """``value`` as text in plain notation, without trailing zeros: the one
    way an amount is shown ("230.5", "0", "100", "0.000000000001")."""
    return format(plain_decimal(value), "f")
