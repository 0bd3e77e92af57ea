"""The trading assistant's storage adapter: trades and audit events in, and
queries over them, on top of the event store's public API."""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal, TypeVar, get_args

import msgspec

from eventstore.codec import check_query_time, check_value, error_path
from eventstore.errors import StorageError, ValidationError
from eventstore.events import NO_STREAM, STREAM_EXISTS, AppendResult, NewEvent, StoredEvent
from eventstore.paging import Page, page_cursor
from eventstore.store import EventStore

from . import sql
from .events import (
    TRADE_EXECUTED,
    AuditEvent,
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
    register,
)

__all__ = ["StorageAdapter", "TradeStatus", "audit_stream", "portfolio_stream"]

PORTFOLIO_CATEGORY: Final = "portfolio"
AUDIT_CATEGORY: Final = "audit"
DEFAULT_LIMIT: Final = 1000

S = TypeVar("S", bound=msgspec.Struct)

#: Which trades :meth:`StorageAdapter.list_trades` lists: those that stand
#: (executed, not cancelled: the ones positions are made of), the cancelled
#: ones, or both.
TradeStatus = Literal["executed", "cancelled", "any"]


def portfolio_stream(portfolio_id: str) -> str:
    return f"{PORTFOLIO_CATEGORY}-{portfolio_id}"


def audit_stream(symbol: str) -> str:
    return f"{AUDIT_CATEGORY}-{symbol}"


def _validated(obj: S, cls: type[S], operation: str) -> S:
    """Structs built in code skip Meta constraints: check them like decoded input."""
    if not isinstance(obj, cls):
        raise ValidationError(
            f"expected a {cls.__name__}, got {type(obj).__name__}",
            field=cls.__name__.lower(),
            operation=operation,
        )
    # Before to_builtins, which would turn Decimal('NaN') into the text "NaN".
    # Field paths are relative to the object passed: "details.score".
    check_value(obj, "", {"operation": operation})
    try:
        return msgspec.convert(msgspec.to_builtins(obj), cls, strict=False)
    except msgspec.ValidationError as exc:
        field = error_path(exc).lstrip(".") or cls.__name__.lower()
        raise ValidationError(str(exc), field=field, operation=operation) from exc


def _decoded(events: list[StoredEvent], cls: type[S], operation: str) -> list[S]:
    out: list[S] = []
    for event in events:
        try:
            out.append(msgspec.convert(event.data, cls, strict=False))
        except msgspec.ValidationError as exc:
            raise StorageError(
                f"event {event.event_id} ({event.type}, position {event.position}) "
                f"is not a valid {cls.__name__}: {exc}",
                operation=operation,
                stream_id=event.stream_id,
            ) from exc
    return out


class StorageAdapter:
    """Saves trades and audit events as events, idempotently, and lists them.

    * a trade is a ``TradeExecuted`` event in ``portfolio-<portfolio_id>``,
      keyed ``trade:<trade_id>`` unless the caller gives a key;
    * an audit event is an event of its own ``type`` in ``audit-<symbol>``,
      keyed ``audit:<id>`` unless the caller gives a key.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        register(store.registry)  # the trading types, validated on append

    def save_trade(self, trade: Trade, *, idempotency_key: str | None = None) -> AppendResult:
        trade = _validated(trade, Trade, "save_trade")
        key = idempotency_key if idempotency_key is not None else f"trade:{trade.trade_id}"
        return self.store.append(
            portfolio_stream(trade.portfolio_id),
            [NewEvent(TRADE_EXECUTED, trade)],
            idempotency_key=key,
        )

    def save_audit_event(
        self, event: AuditEvent, *, idempotency_key: str | None = None
    ) -> AppendResult:
        event = _validated(event, AuditEvent, "save_audit_event")
        key = idempotency_key if idempotency_key is not None else f"audit:{event.id}"
        return self.store.append(
            audit_stream(event.symbol), [NewEvent(event.type, event)], idempotency_key=key
        )

    def open_portfolio(
        self, opened: PortfolioOpened, *, idempotency_key: str | None = None
    ) -> AppendResult:
        """The first event of ``portfolio-<id>`` (a second open is refused)."""
        opened = _validated(opened, PortfolioOpened, "open_portfolio")
        return self.store.append(
            portfolio_stream(opened.portfolio_id),
            [NewEvent(PortfolioOpened.EVENT_TYPE, opened)],
            expected_version=NO_STREAM,
            idempotency_key=idempotency_key or f"portfolio-opened:{opened.portfolio_id}",
        )

    def deposit_cash(
        self, deposit: CashDeposited, *, idempotency_key: str | None = None
    ) -> AppendResult:
        deposit = _validated(deposit, CashDeposited, "deposit_cash")
        return self._to_portfolio(
            deposit.portfolio_id,
            NewEvent(CashDeposited.EVENT_TYPE, deposit),
            idempotency_key or f"deposit:{deposit.deposit_id}",
        )

    def withdraw_cash(
        self, withdrawal: CashWithdrawn, *, idempotency_key: str | None = None
    ) -> AppendResult:
        withdrawal = _validated(withdrawal, CashWithdrawn, "withdraw_cash")
        return self._to_portfolio(
            withdrawal.portfolio_id,
            NewEvent(CashWithdrawn.EVENT_TYPE, withdrawal),
            idempotency_key or f"withdrawal:{withdrawal.withdrawal_id}",
        )

    def cancel_trade(
        self, cancel: TradeCancelled, *, idempotency_key: str | None = None
    ) -> AppendResult:
        """Record that a trade is cancelled: the projections recompute its
        position as if it had never happened."""
        cancel = _validated(cancel, TradeCancelled, "cancel_trade")
        stream = portfolio_stream(cancel.portfolio_id)
        rows = self.store.query("cancel_trade", sql.TRADE_IN_STREAM, (stream, cancel.trade_id))
        if not rows or not rows[0][0]:
            # The projection would stop at such a cancellation: refuse it here.
            raise ValidationError(
                f"trade {cancel.trade_id!r} was never executed in portfolio "
                f"{cancel.portfolio_id!r}",
                field="trade_id",
                operation="cancel_trade",
                stream_id=stream,
            )
        return self._to_portfolio(
            cancel.portfolio_id,
            NewEvent(TradeCancelled.EVENT_TYPE, cancel),
            idempotency_key or f"cancel:{cancel.trade_id}",
        )

    def _to_portfolio(self, portfolio_id: str, event: NewEvent, key: str) -> AppendResult:
        # The portfolio's stream must exist: it starts with PortfolioOpened.
        return self.store.append(
            portfolio_stream(portfolio_id),
            [event],
            expected_version=STREAM_EXISTS,
            idempotency_key=key,
        )

    def list_trades(
        self,
        symbol: str | None = None,
        portfolio_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        *,
        status: TradeStatus = "executed",
        after: str | None = None,
    ) -> Page[Trade]:
        """Trades by symbol and/or portfolio, ``since <= executed_at < until``,
        in execution order: a page of at most ``limit``, whose ``next`` (None
        at the end) is the ``after`` of the next page.

        ``status``: "executed" (the default) lists the trades that stand,
        leaving out those a ``TradeCancelled`` undid, as the positions do;
        "cancelled" only those; "any" both (the log's record of every fill).
        """
        op = "list_trades"
        check_query_time(since, "since", op)
        check_query_time(until, "until", op)
        if status not in get_args(TradeStatus):
            raise ValidationError(
                f"status must be one of {', '.join(get_args(TradeStatus))}, got {status!r}",
                field="status",
                operation=op,
            )

        def page_after(cursor: str | None) -> Page[StoredEvent]:
            return self.store.find_events(
                type=TRADE_EXECUTED,
                symbol=symbol,
                stream_id=None if portfolio_id is None else portfolio_stream(portfolio_id),
                since=since,
                until=until,
                limit=limit,
                after=cursor,
            )

        if status == "any":
            page = page_after(after)
            return Page(_decoded(page.items, Trade, op), page.next)
        # Filtered: read on until the page is full (or the log ends), so a
        # page is short only at the end, and ``next`` is exact.
        wanted = status == "cancelled"
        kept: list[tuple[StoredEvent, Trade]] = []
        cursor = after
        while True:
            page = page_after(cursor)
            trades = _decoded(page.items, Trade, op)
            cancelled = self._cancelled(page.items, trades)
            for event, trade in zip(page.items, trades, strict=True):
                if ((event.stream_id, trade.trade_id) in cancelled) == wanted:
                    kept.append((event, trade))
                    if len(kept) > limit:
                        last = kept[limit - 1][0]
                        return Page([t for _, t in kept[:limit]], page_cursor(last))
            if page.next is None:
                return Page([t for _, t in kept])
            cursor = page.next

    def _cancelled(self, events: list[StoredEvent], trades: list[Trade]) -> set[tuple[str, str]]:
        """(stream, trade id) of those of ``trades`` a cancellation undid."""
        if not trades:
            return set()
        rows = self.store.query(
            "list_trades",
            sql.CANCELLED_TRADES,
            (
                sorted({e.stream_id for e in events}),
                TradeCancelled.EVENT_TYPE,
                sorted({t.trade_id for t in trades}),
            ),
        )
        return {(str(row[0]), str(row[1])) for row in rows}

    def list_audit_events(
        self,
        symbol: str | None = None,
        type: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        *,
        after: str | None = None,
    ) -> Page[AuditEvent]:
        """Audit events by symbol and/or type, ``since <= occurred_at < until``,
        in the order they occurred: a page of at most ``limit``, whose
        ``next`` (None at the end) is the ``after`` of the next page."""
        op = "list_audit_events"
        check_query_time(since, "since", op)
        check_query_time(until, "until", op)
        page = self.store.find_events(
            category=AUDIT_CATEGORY,
            type=type,
            symbol=symbol,
            since=since,
            until=until,
            limit=limit,
            after=after,
        )
        return Page(_decoded(page.items, AuditEvent, op), page.next)
