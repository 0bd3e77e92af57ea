"""Reading the read models: a portfolio and its positions, as projected
(they follow the log once the projection worker has caught up). Amounts
come back plain (models.plain_decimal: 230.5, not 230.500000000000; 0,
not 0E-12), the same values the tables hold."""

from __future__ import annotations

from typing import Any

from eventstore import EventStore

from . import sql
from .models import Portfolio, Position, row_of

__all__ = ["get_portfolio", "get_positions"]


def _rows(store: EventStore, operation: str, query: Any, params: Any) -> list[dict[str, Any]]:
    return store.query(operation, query, params, by_name=True)


def get_positions(store: EventStore, portfolio_id: str) -> list[Position]:
    """The portfolio's open and closed positions, by symbol."""
    rows = _rows(store, "get_positions", sql.POSITIONS, (portfolio_id,))
    return [row_of(Position, row) for row in rows]


def get_portfolio(store: EventStore, portfolio_id: str) -> Portfolio | None:
    """The portfolio's cash, realised P&L and fees (None before it is opened
    and projected)."""
    rows = _rows(store, "get_portfolio", sql.PORTFOLIO, (portfolio_id,))
    return row_of(Portfolio, rows[0]) if rows else None
