"""Read models derived from the audit log: trades, positions, portfolios.

Projections depend only on the event store's public API: they read the
global log with ``EventStore.read_all`` and write their own tables.
"""

from .errors import CheckpointMoved, ProjectionError
from .models import Portfolio, Position, TradeRow, decimal_text, plain_decimal
from .rules import PositionState, apply_fill, cash_effect, replay_fills, round_cost
from .runner import ProjectionRunner
from .sql import LIVE, Tables
from .trading import TradingProjection

__all__ = [
    "LIVE",
    "CheckpointMoved",
    "Portfolio",
    "Position",
    "PositionState",
    "ProjectionError",
    "ProjectionRunner",
    "Tables",
    "TradeRow",
    "TradingProjection",
    "apply_fill",
    "cash_effect",
    "decimal_text",
    "plain_decimal",
    "replay_fills",
    "round_cost",
]
