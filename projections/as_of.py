"""A portfolio's positions and cash as of a time T, replayed from the log.

Not from the projection's tables: the portfolio's own stream
(``portfolio-<id>``) is read in version order up to the last event the
store recorded at or before T (``created_at``, which never goes back within
a stream), and folded by the same rules as the projection
(:mod:`projections.rules`): "what did the log say I held at 10:30?".
The numbers equal the projection's rows after the same events; an event
the projection would refuse is refused here too (:class:`ProjectionError`).
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import Final

import msgspec

from eventstore import EventStore, StoredEvent, ValidationError
from trading import CashDeposited, CashWithdrawn, PortfolioOpened, Trade, TradeCancelled

from .errors import ProjectionError
from .rules import CONTEXT, ZERO, PositionState, apply_fill, cash_effect, replay_fills

__all__ = ["HeldPosition", "PortfolioAsOf", "positions_as_of"]

NAME: Final = "as_of"
PAGE: Final = 1000
_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    cls.EVENT_TYPE: cls
    for cls in (PortfolioOpened, CashDeposited, CashWithdrawn, Trade, TradeCancelled)
}


class HeldPosition(msgspec.Struct, frozen=True):
    """One (portfolio, symbol) position as of T (average cost, signed quantity)."""

    symbol: str
    quantity: Decimal
    avg_cost: Decimal
    realized_pnl: Decimal
    fees: Decimal
    trade_count: int


class PortfolioAsOf(msgspec.Struct, frozen=True):
    """The portfolio as the log stood at ``as_of``; ``opened`` False when it
    was not open yet then. ``events`` is how many of its events were replayed;
    ``last_event_at`` when the store recorded the last of them."""

    portfolio_id: str
    as_of: dt.datetime
    opened: bool
    cash: Decimal
    realized_pnl: Decimal
    fees: Decimal
    positions: tuple[HeldPosition, ...]
    events: int
    last_event_at: dt.datetime | None


class _Fill(msgspec.Struct):
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    cancelled: bool = False


def positions_as_of(store: EventStore, portfolio_id: str, as_of: dt.datetime) -> PortfolioAsOf:
    """Replay ``portfolio-<portfolio_id>`` up to ``as_of`` (timezone-aware)."""
    if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
        raise ValidationError(
            "as_of must be a timezone-aware datetime", field="as_of", operation=NAME
        )
    stream = f"portfolio-{portfolio_id}"
    opened = False
    cash = ZERO
    fills: dict[str, _Fill] = {}
    positions: dict[str, PositionState] = {}
    count = 0
    last_at: dt.datetime | None = None
    version = 1
    done = False
    with decimal.localcontext(CONTEXT):
        while not done:
            page = store.read_stream(stream, from_version=version, limit=PAGE)
            for event in page:
                if event.created_at > as_of:
                    done = True
                    break
                count += 1
                last_at = event.created_at
                payload = _decode(event)
                if payload is None:
                    continue
                if isinstance(payload, PortfolioOpened):
                    if opened:
                        _refuse(event, f"portfolio {portfolio_id!r} is already open")
                    opened = True
                    continue
                if not opened:
                    _refuse(event, f"portfolio {portfolio_id!r} was never opened")
                if isinstance(payload, CashDeposited):
                    cash += payload.amount
                elif isinstance(payload, CashWithdrawn):
                    cash -= payload.amount
                elif isinstance(payload, Trade):
                    if payload.trade_id in fills:
                        _refuse(event, f"trade {payload.trade_id!r} was already executed")
                    fills[payload.trade_id] = _Fill(
                        payload.symbol, payload.side, payload.quantity, payload.price, payload.fees
                    )
                    before = positions.get(payload.symbol, PositionState())
                    positions[payload.symbol] = apply_fill(
                        before, payload.side, payload.quantity, payload.price, payload.fees
                    )
                    cash += cash_effect(payload.side, payload.quantity, payload.price, payload.fees)
                elif isinstance(payload, TradeCancelled):
                    fill = fills.get(payload.trade_id)
                    if fill is None:
                        _refuse(
                            event,
                            f"trade {payload.trade_id!r} was never executed in portfolio "
                            f"{portfolio_id!r}",
                        )
                    assert fill is not None
                    if fill.cancelled:
                        continue
                    fill.cancelled = True
                    positions[fill.symbol] = replay_fills(
                        [
                            (f.side, f.quantity, f.price, f.fees)  # type: ignore[misc]
                            for f in fills.values()
                            if f.symbol == fill.symbol and not f.cancelled
                        ]
                    )
                    cash -= cash_effect(
                        fill.side,  # type: ignore[arg-type]
                        fill.quantity,
                        fill.price,
                        fill.fees,
                    )
            if len(page) < PAGE:
                break
            version += len(page)
        held = tuple(
            HeldPosition(
                symbol,
                state.quantity,
                state.avg_cost,
                state.realized_pnl,
                state.fees,
                state.trade_count,
            )
            for symbol, state in sorted(positions.items())
            if state.trade_count > 0
        )
        realized = sum((p.realized_pnl for p in held), ZERO)
        fees = sum((p.fees for p in held), ZERO)
    return PortfolioAsOf(
        portfolio_id=portfolio_id,
        as_of=as_of,
        opened=opened,
        cash=cash,
        realized_pnl=realized,
        fees=fees,
        positions=held,
        events=count,
        last_event_at=last_at,
    )


def _decode(event: StoredEvent) -> msgspec.Struct | None:
    cls = _TYPES.get(event.type)
    if cls is None:
        return None
    try:
        return msgspec.convert(event.data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ProjectionError(NAME, event, f"payload does not decode: {exc}") from exc


def _refuse(event: StoredEvent, reason: str) -> None:
    raise ProjectionError(NAME, event, reason)
