"""The trading read model: trades, positions and portfolios from the log.

:meth:`TradingProjection.apply` applies one batch of events inside the
caller's transaction (the runner commits it together with the checkpoint).
State is loaded once per batch, changed in memory by the rules of
:mod:`projections.rules`, and written back at the end.

What the projection refuses (it stops there, see ProjectionError): a
payload that does not decode; a trading event outside its portfolio's
stream; a portfolio opened twice; cash or a trade for a portfolio never
opened; a trade id executed twice; a cancellation of an unknown trade.
A second cancellation of the same trade changes nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable, Sequence
from typing import Any, Final, LiteralString, TypeVar

import msgspec
import psycopg

from eventstore import RawStoredEvent, StoredEvent, payload_decoder
from trading import (
    CashDeposited,
    CashWithdrawn,
    PortfolioOpened,
    Trade,
    TradeCancelled,
)

from . import sql
from .errors import ProjectionError
from .models import Portfolio, Position, TradeRow
from .rules import CONTEXT, ZERO, PositionState, apply_fill, cash_effect, replay_fills
from .sql import Tables

__all__ = ["TradingProjection"]

S = TypeVar("S", bound=msgspec.Struct)

PORTFOLIO_PREFIX: Final = "portfolio-"
EVENT_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    cls.EVENT_TYPE: cls
    for cls in (PortfolioOpened, CashDeposited, CashWithdrawn, Trade, TradeCancelled)
}

#: Each type's payload decoded from its JSON bytes straight into its Struct.
DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: payload_decoder(cls) for name, cls in EVENT_TYPES.items()
}

Event = StoredEvent | RawStoredEvent

#: A row being worked on, by column name; built from the table's Struct
#: (projections.models), so its keys are the table's columns.
Row = dict[str, Any]


def _row(model: msgspec.Struct) -> Row:
    return msgspec.structs.asdict(model)


PositionKey = tuple[str, str]


class _Refused(Exception):
    """The event cannot be applied (becomes a ProjectionError)."""


class TradingProjection:
    """Derives utcp.trades, utcp.positions and utcp.portfolios."""

    name: Final = "trading"
    #: The event types it reads; everything else (audit events…) moves nothing.
    event_types: Final = tuple(EVENT_TYPES)

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[Event], tables: Tables) -> None:
        """Apply ``events`` (in log order) to ``tables``, in ``conn``'s transaction."""
        batch = _Batch(conn, tables)
        decoded = [(event, self._decode(event)) for event in events]
        batch.prefetch(payload for _, payload in decoded if payload is not None)
        with decimal.localcontext(CONTEXT):
            for event, payload in decoded:
                if payload is None:
                    continue
                try:
                    batch.apply(event, payload)
                except _Refused as exc:
                    raise ProjectionError(self.name, event, str(exc)) from None
                except ArithmeticError as exc:  # decimal overflow and the like
                    raise ProjectionError(
                        self.name, event, f"the rules cannot compute it: {exc!r}"
                    ) from exc
        batch.flush()

    def _decode(self, event: Event) -> msgspec.Struct | None:
        """The payload as its Struct (None for types the projection does not
        read: those are never decoded). A raw event's JSON bytes decode
        straight into the Struct; a decoded event's dict is converted."""
        cls = EVENT_TYPES.get(event.type)
        if cls is None:
            return None
        payload: msgspec.Struct
        try:
            if isinstance(event, RawStoredEvent):
                payload = DECODERS[event.type].decode(event.data)
            else:
                payload = msgspec.convert(event.data, cls, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ProjectionError(self.name, event, f"payload does not decode: {exc}") from exc
        expected = PORTFOLIO_PREFIX + payload.portfolio_id  # type: ignore[attr-defined]
        if event.stream_id != expected:
            raise ProjectionError(
                self.name, event, f"a {event.type} event belongs in stream {expected!r}"
            )
        return payload


class _Batch:
    """The rows one batch touches, loaded once and written back once."""

    def __init__(self, conn: psycopg.Connection[Any], tables: Tables) -> None:
        self.conn = conn
        self.tables = tables
        self.portfolios: dict[str, Row | None] = {}
        self.trades: dict[str, Row | None] = {}
        self.positions: dict[PositionKey, Row | None] = {}
        self.dirty_portfolios: set[str] = set()
        self.dirty_trades: set[str] = set()
        self.dirty_positions: set[PositionKey] = set()
        #: (portfolio, symbol) whose trades were all loaded (for cancellations)
        self.complete: set[PositionKey] = set()

    # -- loading ---------------------------------------------------------

    def _rows(self, table: str, where: LiteralString, params: Sequence[Any]) -> list[Row]:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(sql.select_by(self.tables, table, where), params).fetchall()

    def prefetch(self, payloads: Iterable[msgspec.Struct]) -> None:
        portfolio_ids: set[str] = set()
        trade_ids: set[str] = set()
        keys: set[PositionKey] = set()
        for p in payloads:
            portfolio_ids.add(p.portfolio_id)  # type: ignore[attr-defined]
            if isinstance(p, Trade | TradeCancelled):
                trade_ids.add(p.trade_id)
            if isinstance(p, Trade):
                keys.add((p.portfolio_id, p.symbol))
        for pid in portfolio_ids:
            self.portfolios[pid] = None
        for row in self._rows("portfolios", "portfolio_id = ANY(%s)", [list(portfolio_ids)]):
            self.portfolios[row["portfolio_id"]] = row
        for tid in trade_ids:
            self.trades[tid] = None
        for row in self._rows("trades", "trade_id = ANY(%s)", [list(trade_ids)]):
            self.trades[row["trade_id"]] = row
            keys.add((row["portfolio_id"], row["symbol"]))
        for key in keys:
            self.positions[key] = None
        if keys:
            pids, symbols = zip(*keys, strict=True)
            for row in self._rows(
                "positions",
                "(portfolio_id, symbol) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                [list(pids), list(symbols)],
            ):
                self.positions[(row["portfolio_id"], row["symbol"])] = row

    def _trades_of(self, key: PositionKey) -> list[Row]:
        """Every trade of one position (any status), in log order."""
        if key not in self.complete:
            for row in self._rows("trades", "portfolio_id = %s AND symbol = %s", [key[0], key[1]]):
                self.trades.setdefault(row["trade_id"], row)
            self.complete.add(key)
        mine = [
            row
            for row in self.trades.values()
            if row is not None and (row["portfolio_id"], row["symbol"]) == key
        ]
        return sorted(mine, key=lambda row: row["event_position"])

    # -- applying --------------------------------------------------------

    def _portfolio(self, portfolio_id: str) -> Row:
        row = self.portfolios.get(portfolio_id)
        if row is None:
            raise _Refused(f"portfolio {portfolio_id!r} was never opened")
        return row

    def apply(self, event: Event, payload: msgspec.Struct) -> None:
        at = event.created_at
        if isinstance(payload, PortfolioOpened):
            self._open(payload, at)
        elif isinstance(payload, CashDeposited | CashWithdrawn):
            row = self._portfolio(payload.portfolio_id)
            sign = 1 if isinstance(payload, CashDeposited) else -1
            row["cash"] += sign * payload.amount
            self._touch_portfolio(row, at)
        elif isinstance(payload, Trade):
            self._execute(payload, event, at)
        elif isinstance(payload, TradeCancelled):
            self._cancel(payload, at)

    def _open(self, opened: PortfolioOpened, at: dt.datetime) -> None:
        if self.portfolios.get(opened.portfolio_id) is not None:
            raise _Refused(f"portfolio {opened.portfolio_id!r} is already open")
        row = _row(
            Portfolio(
                portfolio_id=opened.portfolio_id,
                name=opened.name,
                base_currency=opened.base_currency,
                cash=ZERO,
                realized_pnl=ZERO,
                fees=ZERO,
                opened_at=opened.opened_at,
                updated_at=at,
            )
        )
        self.portfolios[opened.portfolio_id] = row
        self.dirty_portfolios.add(opened.portfolio_id)

    def _execute(self, trade: Trade, event: Event, at: dt.datetime) -> None:
        portfolio = self._portfolio(trade.portfolio_id)
        if self.trades.get(trade.trade_id) is not None:
            raise _Refused(f"trade {trade.trade_id!r} was already executed")
        self.trades[trade.trade_id] = _row(
            TradeRow(
                trade_id=trade.trade_id,
                portfolio_id=trade.portfolio_id,
                symbol=trade.symbol,
                side=trade.side,
                quantity=trade.quantity,
                price=trade.price,
                fees=trade.fees,
                executed_at=trade.executed_at,
                order_id=trade.order_id,
                status="executed",
                event_position=event.position,
                updated_at=at,
            )
        )
        self.dirty_trades.add(trade.trade_id)
        key = (trade.portfolio_id, trade.symbol)
        before = self._position_state(key)
        after = apply_fill(before, trade.side, trade.quantity, trade.price, trade.fees)
        self._set_position(key, after, at)
        portfolio["cash"] += cash_effect(trade.side, trade.quantity, trade.price, trade.fees)
        self._move_pnl(portfolio, before, after)
        self._touch_portfolio(portfolio, at)

    def _cancel(self, cancel: TradeCancelled, at: dt.datetime) -> None:
        trade = self.trades.get(cancel.trade_id)
        if trade is None or trade["portfolio_id"] != cancel.portfolio_id:
            raise _Refused(
                f"trade {cancel.trade_id!r} was never executed in portfolio {cancel.portfolio_id!r}"
            )
        if trade["status"] == "cancelled":
            return  # already as if it had never happened
        portfolio = self._portfolio(cancel.portfolio_id)
        trade["status"] = "cancelled"
        trade["updated_at"] = at
        self.dirty_trades.add(cancel.trade_id)
        key = (trade["portfolio_id"], trade["symbol"])
        before = self._position_state(key)
        after = replay_fills(
            [
                (row["side"], row["quantity"], row["price"], row["fees"])
                for row in self._trades_of(key)
                if row["status"] == "executed"
            ]
        )
        self._set_position(key, after, at)
        portfolio["cash"] -= cash_effect(
            trade["side"], trade["quantity"], trade["price"], trade["fees"]
        )
        self._move_pnl(portfolio, before, after)
        self._touch_portfolio(portfolio, at)

    def _position_state(self, key: PositionKey) -> PositionState:
        row = self.positions.get(key)
        if row is None:
            return PositionState()
        return PositionState(
            row["quantity"], row["avg_cost"], row["realized_pnl"], row["fees"], row["trade_count"]
        )

    def _set_position(self, key: PositionKey, state: PositionState, at: dt.datetime) -> None:
        # No trades left (all cancelled): no position, as if none had happened.
        self.positions[key] = (
            None
            if state.trade_count == 0
            else _row(
                Position(
                    portfolio_id=key[0],
                    symbol=key[1],
                    quantity=state.quantity,
                    avg_cost=state.avg_cost,
                    realized_pnl=state.realized_pnl,
                    fees=state.fees,
                    trade_count=state.trade_count,
                    updated_at=at,
                )
            )
        )
        self.dirty_positions.add(key)

    @staticmethod
    def _move_pnl(portfolio: Row, before: PositionState, after: PositionState) -> None:
        portfolio["realized_pnl"] += after.realized_pnl - before.realized_pnl
        portfolio["fees"] += after.fees - before.fees

    def _touch_portfolio(self, row: Row, at: dt.datetime) -> None:
        row["updated_at"] = at
        self.dirty_portfolios.add(row["portfolio_id"])

    # -- writing ---------------------------------------------------------

    def flush(self) -> None:
        def values(table: str, row: Row) -> tuple[Any, ...]:
            return tuple(row[c] for c in sql.COLUMNS[table])

        with self.conn.cursor() as cur:
            for table, dirty, rows in (
                ("portfolios", self.dirty_portfolios, self.portfolios),
                ("trades", self.dirty_trades, self.trades),
            ):
                params = [values(table, r) for k in sorted(dirty) if (r := rows[k]) is not None]
                if params:
                    cur.executemany(sql.upsert(self.tables, table), params)
            upserts = []
            deletes = []
            for key in sorted(self.dirty_positions):
                row = self.positions[key]
                if row is None:
                    deletes.append(key)
                else:
                    upserts.append(values("positions", row))
            if upserts:
                cur.executemany(sql.upsert(self.tables, "positions"), upserts)
            if deletes:
                cur.executemany(sql.delete_position(self.tables), deletes)
