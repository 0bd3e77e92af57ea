"""Payload schemas of the trading assistant's events.

Each is a frozen msgspec Struct with a stable type name. :func:`register`
puts them into a store's registry, so the store validates every payload of
those types (nothing is registered by importing this module).
Schema evolution: add fields with defaults; never change a field's type; a
breaking change gets a new type name and an upcaster.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from eventstore import EventRegistry
from eventstore.codec import check_identifier
from eventstore.errors import ValidationError
from eventstore.limits import (
    CONTROL_PATTERN,
    MAX_ID_LENGTH,
    MAX_TYPE_LENGTH,
    TYPE_PATTERN,
    amount_problem,
    time_problem,
)

from . import setups

__all__ = [
    "TRADE_EXECUTED",
    "AuditEvent",
    "CashDeposited",
    "CashWithdrawn",
    "PortfolioOpened",
    "ProjectionEventSkipped",
    "Trade",
    "TradeCancelled",
    "register",
    "trading_registry",
]

#: An identifier, by the log's one rule (eventstore.codec.check_identifier:
#: not blank, at most limits.MAX_ID_LENGTH characters, no control,
#: invisible or bidirectional formatting characters, Unicode NFC). The
#: Meta keeps what a pattern can say (for decoding and JSON Schema);
#: each Struct's __post_init__ checks the whole rule, decoded or built.
Id = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=MAX_ID_LENGTH, pattern=f"^[^\\x00{CONTROL_PATTERN[1:-1]}]+$"
    ),
]
#: A ticker: letters, digits and . / : - (BRK.B, BTC-USD, ES:CME).
Symbol = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9./:\-]*$")
]
#: An event type name, as the store accepts it (limits.TYPE_PATTERN).
TypeName = Annotated[str, msgspec.Meta(pattern=f"^{TYPE_PATTERN}$", max_length=MAX_TYPE_LENGTH)]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]


def _invalid(name: str, message: str) -> ValidationError:
    # A ValueError too: msgspec turns it into its own ValidationError (with
    # this message) when decoding, and a caller building a Struct in code
    # gets the store's error, naming the field.
    return ValidationError(f"`{name}` {message}", field=name, operation="validate")


def _finite(name: str, value: Decimal) -> None:
    """A Decimal the projections can compute with (eventstore.limits)."""
    if not isinstance(value, Decimal):
        raise _invalid(name, f"must be a finite decimal, got {value!r}")
    problem = amount_problem(value)
    if problem is not None:
        raise _invalid(name, problem)


def _time(name: str, value: dt.datetime) -> None:
    """A timezone-aware datetime every reader can load back (eventstore.limits)."""
    if not isinstance(value, dt.datetime):
        raise _invalid(name, f"must be a datetime, got {type(value).__name__}")
    problem = time_problem(value)
    if problem is not None:
        raise _invalid(name, problem)


def _check_id(name: str, value: str) -> None:
    # Meta constraints are checked on decode, not on construction: a Struct
    # built in code is checked here too, by the log's identifier rule.
    check_identifier(value, name, what=f"`{name}`", operation="validate")


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """An executed trade (stored as a ``TradeExecuted`` event)."""

    EVENT_TYPE: ClassVar[str] = "TradeExecuted"

    trade_id: Id
    portfolio_id: Id
    symbol: Symbol
    side: Literal["buy", "sell"]
    quantity: Decimal
    price: Decimal
    executed_at: Timestamp
    fees: Decimal = Decimal(0)
    order_id: Id | None = None

    def __post_init__(self) -> None:
        _check_id("trade_id", self.trade_id)
        _check_id("portfolio_id", self.portfolio_id)
        _check_id("symbol", self.symbol)
        for name in ("quantity", "price", "fees"):
            _finite(name, getattr(self, name))
        if self.quantity <= 0:
            raise _invalid("quantity", f"must be > 0, got {self.quantity}")
        if self.price < 0:
            raise _invalid("price", f"must be >= 0, got {self.price}")
        if self.fees < 0:
            raise _invalid("fees", f"must be >= 0, got {self.fees}")
        if self.order_id is not None:
            _check_id("order_id", self.order_id)
        _time("executed_at", self.executed_at)


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something the assistant did or decided: a signal, an order, a decision.

    Stored with ``type`` as its event type, in the stream ``audit-<symbol>``.
    """

    id: Id
    type: TypeName
    symbol: Symbol
    actor: Id
    occurred_at: Timestamp
    details: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        _check_id("symbol", self.symbol)
        _check_id("actor", self.actor)
        _time("occurred_at", self.occurred_at)


Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3,5}$")]


def _positive(name: str, value: Decimal) -> None:
    _finite(name, value)
    if value <= 0:
        raise _invalid(name, f"must be > 0, got {value}")


class PortfolioOpened(msgspec.Struct, frozen=True, kw_only=True):
    """A portfolio starts (the first event of ``portfolio-<portfolio_id>``)."""

    EVENT_TYPE: ClassVar[str] = "PortfolioOpened"

    portfolio_id: Id
    name: Id
    base_currency: Currency
    opened_at: Timestamp

    def __post_init__(self) -> None:
        _check_id("portfolio_id", self.portfolio_id)
        _check_id("name", self.name)
        _time("opened_at", self.opened_at)


class CashDeposited(msgspec.Struct, frozen=True, kw_only=True):
    """Cash paid into a portfolio."""

    EVENT_TYPE: ClassVar[str] = "CashDeposited"

    deposit_id: Id
    portfolio_id: Id
    amount: Decimal
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_id("deposit_id", self.deposit_id)
        _check_id("portfolio_id", self.portfolio_id)
        _positive("amount", self.amount)
        _time("occurred_at", self.occurred_at)


class CashWithdrawn(msgspec.Struct, frozen=True, kw_only=True):
    """Cash taken out of a portfolio."""

    EVENT_TYPE: ClassVar[str] = "CashWithdrawn"

    withdrawal_id: Id
    portfolio_id: Id
    amount: Decimal
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_id("withdrawal_id", self.withdrawal_id)
        _check_id("portfolio_id", self.portfolio_id)
        _positive("amount", self.amount)
        _time("occurred_at", self.occurred_at)


class TradeCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """A trade removed as if it had never happened (busted by the venue,
    booked in error): positions are recomputed without it."""

    EVENT_TYPE: ClassVar[str] = "TradeCancelled"

    trade_id: Id
    portfolio_id: Id
    reason: str
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_id("trade_id", self.trade_id)
        _check_id("portfolio_id", self.portfolio_id)
        if "\x00" in self.reason:
            raise _invalid("reason", "must not contain NUL characters")
        _time("occurred_at", self.occurred_at)


class ProjectionEventSkipped(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's decision that a projection passes over one event its
    rules refuse (``eventstore project skip``), recorded in the log, in
    ``projection-<projection>``, so every rebuild makes the same decision.
    It never drops an event the rules accept."""

    EVENT_TYPE: ClassVar[str] = "ProjectionEventSkipped"

    projection: Id
    event_id: uuid.UUID
    reason: Id
    actor: Id
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_id("projection", self.projection)
        _check_id("reason", self.reason)
        _check_id("actor", self.actor)
        _time("occurred_at", self.occurred_at)


TRADE_EXECUTED = Trade.EVENT_TYPE


def register(registry: EventRegistry) -> EventRegistry:
    """Register the trading event types in ``registry`` (idempotent), each
    with the business-time field the database derives for it
    (``utcp.event_time_fields``), and return it."""
    registry.register(PortfolioOpened.EVENT_TYPE, PortfolioOpened, time_field="opened_at")
    registry.register(CashDeposited.EVENT_TYPE, CashDeposited, time_field="occurred_at")
    registry.register(CashWithdrawn.EVENT_TYPE, CashWithdrawn, time_field="occurred_at")
    registry.register(TRADE_EXECUTED, Trade, time_field="executed_at")
    registry.register(TradeCancelled.EVENT_TYPE, TradeCancelled, time_field="occurred_at")
    registry.register(
        ProjectionEventSkipped.EVENT_TYPE, ProjectionEventSkipped, time_field="occurred_at"
    )
    setups.register(registry)  # the assistant's setups and events (trading.setups)
    return registry


def trading_registry() -> EventRegistry:
    """A new registry holding the trading event types."""
    return register(EventRegistry())
