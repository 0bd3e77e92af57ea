"""The trading assistant's domain on top of the log: its event types
(:mod:`trading.events`), the storage adapter that records trades, cash
movements and audit events (:mod:`trading.adapter`), and the assistant's
trade setups with their revisions and saved events (:mod:`trading.setups`).

    from eventstore import EventStore
    from trading import StorageAdapter, trading_registry

    with EventStore.open(registry=trading_registry()) as store:
        adapter = StorageAdapter(store)

Every public type is exported here, with the package as its module.
"""

from eventstore import present_as_package

from .adapter import StorageAdapter, audit_stream, portfolio_stream
from .events import (
    TRADE_EXECUTED,
    AuditEvent,
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    ProjectionEventSkipped,
    Trade,
    TradeCancelled,
    register,
    trading_registry,
)

__all__ = [
    "TRADE_EXECUTED",
    "AuditEvent",
    "CashDeposited",
    "CashWithdrawn",
    "PortfolioOpened",
    "ProjectionEventSkipped",
    "StorageAdapter",
    "Trade",
    "TradeCancelled",
    "audit_stream",
    "portfolio_stream",
    "register",
    "trading_registry",
]

present_as_package(__name__, globals())
