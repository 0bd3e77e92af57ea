"""Read models derived from the audit log: trades, positions, portfolios.

Projections depend only on the public faces of the event store
(``eventstore``) and of the trading domain (``trading``): they read the
global log with ``EventStore.read_all``, write their own tables on their
own connections, and read them back through ``EventStore.query``.

    from projections import ProjectionRunner, get_portfolio, get_positions
    from projections.rebuild import rebuild  # the module keeps its name

Every public type is exported here, with the package as its module.
"""

from eventstore import present_as_package

from .errors import CheckpointMoved, ProjectionError
from .models import Portfolio, Position, TradeRow, decimal_text, plain_decimal
from .queries import get_portfolio, get_positions
from .rebuild import RebuildError, RebuildProgress, RebuildReport, RowDifference
from .rules import PositionState, Side, apply_fill, cash_effect, replay_fills, round_cost
from .runner import LeaseHolder, Progress, ProjectionRunner, skip_stream
from .sql import LIVE, Tables, shadow_tables
from .status import ProjectionStatus, projection_status
from .trading import TradingProjection

__all__ = [
    "LIVE",
    "CheckpointMoved",
    "LeaseHolder",
    "Portfolio",
    "Position",
    "PositionState",
    "Progress",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionStatus",
    "RebuildError",
    "RebuildProgress",
    "RebuildReport",
    "RowDifference",
    "Side",
    "Tables",
    "TradeRow",
    "TradingProjection",
    "apply_fill",
    "cash_effect",
    "decimal_text",
    "get_portfolio",
    "get_positions",
    "plain_decimal",
    "projection_status",
    "replay_fills",
    "round_cost",
    "shadow_tables",
    "skip_stream",
]

present_as_package(__name__, globals())
