"""The read models' rows: one Struct per table, whose fields are the table's
columns (projections/sql.py derives its column lists from them, and rows
are mapped to them by name, never by position)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec

__all__ = ["Portfolio", "Position"]


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
