"""The trading assistant's trade setups and saved events, in its own shapes.

The assistant (its Go ``libs/utcp`` storage provider) saves *setups* — a
planned trade: entry, stop, targets, sized risk — and *events* (signals,
decisions) under ids it chooses. Here, nothing it saves is ever overwritten:

* an event is an ``AssistantEvent`` in stream ``assistant-<symbol>`` (or,
  saved with a setup, in the setup's stream), under an event id derived from
  its own id (:func:`event_uuid`): the same id with the same content again
  writes nothing; with other content it is refused (:class:`DuplicateEventId`);
* each change of a setup is a ``TradeSetupRevised`` event in stream
  ``setup-<id>`` (revision 1, 2, …). An identical save writes nothing; the
  first ``createdAt`` is kept for good (an unset one, Go's zero time, means
  now). A revision, its risk and its event are appended in one batch: all or
  nothing.

Reads are served by the log's indexes (sqitch change ``setup_indexes``):
the latest revision of one setup by the stream's (stream_id, version)
index; the list newest first (first ``createdAt``, then id) by partial
indexes on the revisions, never by a scan of the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import time
import uuid
from typing import Any, Final

import msgspec

from eventstore import checkpoint_sql
from eventstore import sql as store_sql
from eventstore.errors import (
    DuplicateEventId,
    IdempotencyConflict,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from eventstore.events import EventRegistry, NewEvent, StoredEvent
from eventstore.limits import time_problem
from eventstore.store import EventStore

__all__ = [
    "ASSISTANT_EVENT",
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "SETUP_REVISED",
    "AssistantEvent",
    "SetupRevision",
    "SetupRisk",
    "SetupStore",
    "SetupView",
    "TradeSetup",
    "event_uuid",
]

ASSISTANT_EVENT: Final = "AssistantEvent"
SETUP_REVISED: Final = "TradeSetupRevised"
#: Go's zero time.Time, what the assistant sends for "unset".
ZERO_TIME: Final = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
DEFAULT_LIST_LIMIT: Final = 100
#: A reply of this many setups stays well under the assistant's 1 MiB read
#: limit (a setup is at most ~1.5 KiB: ids, notes and targets are capped).
MAX_LIST_LIMIT: Final = 500
MAX_TEXT: Final = 180  # an id, a symbol: "setup-" + id stays a valid stream id
MAX_NOTES: Final = 2000
MAX_TARGETS: Final = 32
#: Largest encoded payload of an assistant event: a setup read back with its
#: event stays far below the assistant's 1 MiB read limit.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
#: How often a save re-reads and tries again when another save of the same
#: setup got in first.
MAX_RACES: Final = 16
_NAMESPACE: Final = uuid.UUID("5c1d7f3e-8b52-4f0e-9a57-3f2d6a0c9e11")


class AssistantEvent(msgspec.Struct, kw_only=True):
    """The assistant's StoredEvent (Go ``libs/utcp.StoredEvent``), field order kept."""

    id: str
    symbol: str
    type: str
    time: dt.datetime
    payload: dict[str, Any] | None = None


class SetupRisk(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """The assistant's StoredRisk: ``riskPerUnit`` and ``rMultiple`` are left
    out when 0 (Go's omitempty)."""

    position_size: int
    risk_per_unit: float = 0.0
    total_risk: float
    r_multiple: float = 0.0


class TradeSetup(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """The assistant's StoredTrade: a planned trade, not an execution."""

    id: str
    symbol: str
    direction: str
    entry: float
    stop: float
    targets: list[float] | None = None
    event_id: str = ""
    strategy_id: str
    notes: str = ""
    created_at: dt.datetime = ZERO_TIME


class SetupView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A setup's latest revision (Go ``GetTradeOutput``)."""

    trade: TradeSetup
    risk: SetupRisk | None = None
    event: AssistantEvent | None = None


class SetupRevision(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """One revision of a setup, as recorded."""

    revision: int
    recorded_at: dt.datetime
    trade: TradeSetup
    risk: SetupRisk | None = None


class _RevisionData(msgspec.Struct, kw_only=True):
    """The payload of a TradeSetupRevised event (top-level symbol and
    occurred_at are indexed by the database)."""

    setup_id: str
    revision: int
    symbol: str
    strategy_id: str
    occurred_at: dt.datetime
    trade: TradeSetup
    risk: SetupRisk | None = None


class _EventData(msgspec.Struct, kw_only=True):
    """The payload of an AssistantEvent."""

    id: str
    symbol: str
    type: str
    occurred_at: dt.datetime
    payload: dict[str, Any] | None = None


_encode = msgspec.json.Encoder(order="sorted").encode
_decode_any = msgspec.json.Decoder().decode


def _back_off(attempt: int) -> None:
    """Before a retry after losing a race: a short random pause, so that
    concurrent saves of one setup do not keep colliding."""
    if attempt:
        time.sleep(random.uniform(0, 0.005 * min(attempt, 8)))


def event_uuid(event_id: str) -> uuid.UUID:
    """The log's event id of the assistant's event ``event_id``."""
    return uuid.uuid5(_NAMESPACE, event_id)


def setup_stream(setup_id: str) -> str:
    return f"setup-{setup_id}"


def event_stream(symbol: str) -> str:
    return f"assistant-{symbol}"


def _as_stored(value: msgspec.Struct | None) -> Any:
    """What the log gives back for ``value``: its JSON, decoded again."""
    return _decode_any(_encode(value))


def _text(value: str, field: str, operation: str, limit: int = MAX_TEXT) -> None:
    if not value.strip():
        raise ValidationError(f"{operation}: {field} is required", field=field, operation=operation)
    if len(value) > limit:
        raise ValidationError(
            f"{operation}: {field} is longer than {limit} characters",
            field=field,
            operation=operation,
        )


def _finite(value: float, field: str, operation: str) -> None:
    if not math.isfinite(value):
        raise ValidationError(
            f"{operation}: {field} must be a finite number", field=field, operation=operation
        )


def _real_time(value: dt.datetime, field: str, operation: str) -> None:
    if value == ZERO_TIME:
        raise ValidationError(f"{operation}: {field} is required", field=field, operation=operation)
    problem = time_problem(value)
    if problem is not None:
        raise ValidationError(f"{operation}: {field} {problem}", field=field, operation=operation)


def check_event(event: AssistantEvent, operation: str, prefix: str = "event") -> None:
    _text(event.id, f"{prefix}.id", operation)
    _text(event.symbol, f"{prefix}.symbol", operation)
    _text(event.type, f"{prefix}.type", operation)
    _real_time(event.time, f"{prefix}.time", operation)
    if len(_encode(event.payload)) > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            f"{operation}: {prefix}.payload is larger than {MAX_PAYLOAD_BYTES} bytes",
            field=f"{prefix}.payload",
            operation=operation,
        )


def check_setup(trade: TradeSetup, risk: SetupRisk | None, operation: str) -> None:
    _text(trade.id, "trade.id", operation)
    _text(trade.symbol, "trade.symbol", operation)
    _text(trade.direction, "trade.direction", operation)
    _text(trade.strategy_id, "trade.strategyId", operation)
    if trade.event_id:
        _text(trade.event_id, "trade.eventId", operation)
    if len(trade.notes) > MAX_NOTES:
        raise ValidationError(
            f"{operation}: trade.notes is longer than {MAX_NOTES} characters",
            field="trade.notes",
            operation=operation,
        )
    _finite(trade.entry, "trade.entry", operation)
    _finite(trade.stop, "trade.stop", operation)
    targets = trade.targets or []
    if len(targets) > MAX_TARGETS:
        raise ValidationError(
            f"{operation}: trade.targets has more than {MAX_TARGETS} targets",
            field="trade.targets",
            operation=operation,
        )
    for i, target in enumerate(targets):
        _finite(target, f"trade.targets[{i}]", operation)
    if trade.created_at != ZERO_TIME:
        _real_time(trade.created_at, "trade.createdAt", operation)
    if risk is not None:
        _finite(risk.total_risk, "risk.totalRisk", operation)
        _finite(risk.risk_per_unit, "risk.riskPerUnit", operation)
        _finite(risk.r_multiple, "risk.rMultiple", operation)
        if abs(risk.position_size) >= 2**53:
            raise ValidationError(
                f"{operation}: risk.positionSize is out of range",
                field="risk.positionSize",
                operation=operation,
            )


# -- SQL (served by the indexes of sqitch change setup_indexes) ------------------

EVENT_BY_ID: Final = f"SELECT {store_sql.EVENT_COLUMNS} FROM utcp.stored_events WHERE event_id = %s"
LATEST_REVISION: Final = f"""
SELECT {store_sql.EVENT_COLUMNS} FROM utcp.stored_events
 WHERE stream_id = %s AND type = 'TradeSetupRevised'
 ORDER BY stream_version DESC LIMIT 1"""
REVISIONS: Final = f"""
SELECT {store_sql.EVENT_COLUMNS} FROM utcp.stored_events
 WHERE stream_id = %s AND type = 'TradeSetupRevised'
   AND (data ->> 'revision')::bigint > %s
 ORDER BY stream_version LIMIT %s"""
_LIST: Final = """
SELECT {columns} FROM utcp.stored_events e
 WHERE e.type = 'TradeSetupRevised' {filters}
   AND NOT EXISTS (SELECT 1 FROM utcp.stored_events n
                    WHERE n.stream_id = e.stream_id AND n.stream_version > e.stream_version
                      AND n.type = 'TradeSetupRevised')
 ORDER BY e.occurred_at DESC, e.stream_id
 LIMIT %(limit)s"""
# eventstore.sql.EVENT_COLUMNS (StoredEvent's field order), qualified by e.
_COLUMNS: Final = f"""
    e.position, {checkpoint_sql("e.tx_id", "e.position")}, e.event_id, e.stream_id,
    e.stream_version, e.type, e.data, e.metadata, e.symbol, e.occurred_at, e.created_at,
    e.prev_hash, e.hash"""
LIST_ALL: Final = _LIST.format(columns=_COLUMNS, filters="")
LIST_BY_SYMBOL: Final = _LIST.format(columns=_COLUMNS, filters="AND e.symbol = %(symbol)s")
LIST_BY_STRATEGY: Final = _LIST.format(
    columns=_COLUMNS, filters="AND e.data ->> 'strategy_id' = %(strategy)s"
)
LIST_BY_BOTH: Final = _LIST.format(
    columns=_COLUMNS,
    filters="AND e.symbol = %(symbol)s AND e.data ->> 'strategy_id' = %(strategy)s",
)


class SetupStore:
    """Saves and reads the assistant's setups and events (see the module doc)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    # -- events ------------------------------------------------------------

    def _stored_event(self, event_id: str, operation: str) -> StoredEvent | None:
        rows = self.store.query(operation, EVENT_BY_ID, (event_uuid(event_id),))
        return StoredEvent(*rows[0]) if rows else None

    @staticmethod
    def _event_data(event: AssistantEvent) -> _EventData:
        return _EventData(
            id=event.id,
            symbol=event.symbol,
            type=event.type,
            occurred_at=event.time,
            payload=event.payload,
        )

    def _new_event(self, event: AssistantEvent, operation: str) -> NewEvent | None:
        """The event to append, or None when the log has it already with
        this content; DuplicateEventId when it has it with other content."""
        data = self._event_data(event)
        stored = self._stored_event(event.id, operation)
        if stored is None:
            return NewEvent(ASSISTANT_EVENT, data, event_id=event_uuid(event.id))
        if stored.type == ASSISTANT_EVENT and stored.data == _as_stored(data):
            return None
        raise DuplicateEventId(
            f"{operation}: event {event.id!r} already exists with different content "
            "(the log never overwrites: save it under a new id)",
            operation=operation,
            stream_id=stored.stream_id,
        )

    def save_event(self, event: AssistantEvent) -> bool:
        """Save one event; False when it was already saved (nothing written)."""
        operation = "storage.save_event"
        check_event(event, operation)
        for attempt in range(MAX_RACES):
            _back_off(attempt)
            new = self._new_event(event, operation)
            if new is None:
                return False
            try:
                result = self.store.append(
                    event_stream(event.symbol),
                    [new],
                    idempotency_key=f"assistant-event:{new.event_id}",
                )
            except (DuplicateEventId, IdempotencyConflict):
                continue  # saved meanwhile by another call: compare again
            return not result.duplicate
        raise StorageUnavailable(
            f"{operation}: event {event.id!r} kept changing under concurrent saves: try again",
            operation=operation,
        )

    def get_event(self, event_id: str) -> AssistantEvent | None:
        stored = self._stored_event(event_id, "storage.get_event")
        if stored is None or stored.type != ASSISTANT_EVENT:
            return None
        try:
            data = msgspec.convert(stored.data, _EventData, strict=False)
        except msgspec.ValidationError as exc:
            raise StorageError(
                f"event {stored.event_id} (AssistantEvent) does not decode: {exc}",
                operation="storage.get_event",
                stream_id=stored.stream_id,
            ) from exc
        return AssistantEvent(
            id=data.id,
            symbol=data.symbol,
            type=data.type,
            time=data.occurred_at,
            payload=data.payload,
        )

    # -- setups ------------------------------------------------------------

    def _latest(self, setup_id: str, operation: str) -> tuple[StoredEvent, _RevisionData] | None:
        rows = self.store.query(operation, LATEST_REVISION, (setup_stream(setup_id),))
        if not rows:
            return None
        stored = StoredEvent(*rows[0])
        return stored, _revision(stored)

    def save_setup(
        self,
        trade: TradeSetup,
        risk: SetupRisk | None = None,
        event: AssistantEvent | None = None,
    ) -> bool:
        """Record ``trade`` (with its risk and event) as the setup's next
        revision, all or nothing; False when nothing changed (nothing written)."""
        operation = "storage.save_trade"
        check_setup(trade, risk, operation)
        if event is not None:
            check_event(event, operation)
        stream = setup_stream(trade.id)
        for attempt in range(MAX_RACES):
            _back_off(attempt)
            version = self.store.stream_version(stream)
            batch: list[NewEvent] = []
            if event is not None:
                new = self._new_event(event, operation)
                if new is not None:
                    batch.append(new)
            linked = trade.event_id or (event.id if event is not None else "")
            latest = self._latest(trade.id, operation)
            created = trade.created_at
            if latest is not None:
                created = latest[1].trade.created_at  # the first createdAt, for good
            elif created == ZERO_TIME:
                created = dt.datetime.now(dt.UTC)
            setup = msgspec.structs.replace(
                trade, event_id=linked, created_at=created, targets=list(trade.targets or [])
            )
            revision = 1 if latest is None else latest[1].revision + 1
            if latest is None or (
                _as_stored(latest[1].trade) != _as_stored(setup)
                or _as_stored(latest[1].risk) != _as_stored(risk)
            ):
                data = _RevisionData(
                    setup_id=trade.id,
                    revision=revision,
                    symbol=trade.symbol,
                    strategy_id=trade.strategy_id,
                    occurred_at=created,
                    trade=setup,
                    risk=risk,
                )
                batch.append(NewEvent(SETUP_REVISED, data))
            if not batch:
                return False
            digest = hashlib.sha256(
                b"\x00".join([stream.encode(), str(version).encode()])
                + b"".join(_encode([e.type, e.data, str(e.event_id)]) for e in batch)
            ).hexdigest()
            try:
                self.store.append(
                    stream, batch, expected_version=version, idempotency_key=f"setup:{digest}"
                )
            except (WrongExpectedVersion, DuplicateEventId, IdempotencyConflict):
                continue  # another save got in first: read again, compare again
            return True
        raise StorageUnavailable(
            f"{operation}: trade {trade.id!r} kept changing under concurrent saves: try again",
            operation=operation,
            stream_id=stream,
        )

    def get_setup(self, setup_id: str) -> SetupView | None:
        """The latest revision, with its linked event (None: no such setup)."""
        latest = self._latest(setup_id, "storage.get_trade")
        if latest is None:
            return None
        data = latest[1]
        event = self.get_event(data.trade.event_id) if data.trade.event_id else None
        return SetupView(trade=data.trade, risk=data.risk, event=event)

    def revisions(
        self, setup_id: str, limit: int = MAX_LIST_LIMIT, after: int = 0
    ) -> list[SetupRevision]:
        """The setup's revisions after revision ``after``, oldest first
        (empty: no such setup, or none after ``after``)."""
        rows = self.store.query(
            "storage.list_trade_revisions",
            REVISIONS,
            (setup_stream(setup_id), max(after, 0), limit),
        )
        out = []
        for row in rows:
            stored = StoredEvent(*row)
            data = _revision(stored)
            out.append(
                SetupRevision(
                    revision=data.revision,
                    recorded_at=stored.created_at,
                    trade=data.trade,
                    risk=data.risk,
                )
            )
        return out

    def list_setups(
        self,
        symbol: str | None = None,
        strategy_id: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[SetupView]:
        """Latest revisions, newest first (first createdAt, then id), without events."""
        symbol = symbol or None
        strategy_id = strategy_id or None
        if limit <= 0:
            limit = DEFAULT_LIST_LIMIT
        limit = min(limit, MAX_LIST_LIMIT)
        query = (
            LIST_BY_BOTH
            if symbol and strategy_id
            else LIST_BY_SYMBOL
            if symbol
            else LIST_BY_STRATEGY
            if strategy_id
            else LIST_ALL
        )
        rows = self.store.query(
            "storage.list_trades",
            query,
            {"symbol": symbol, "strategy": strategy_id, "limit": limit},
        )
        out = []
        for row in rows:
            data = _revision(StoredEvent(*row))
            out.append(SetupView(trade=data.trade, risk=data.risk))
        return out


def _revision(stored: StoredEvent) -> _RevisionData:
    try:
        return msgspec.convert(stored.data, _RevisionData, strict=False)
    except msgspec.ValidationError as exc:
        raise StorageError(
            f"event {stored.event_id} ({stored.type}) is not a valid setup revision: {exc}",
            operation="storage.get_trade",
            stream_id=stored.stream_id,
        ) from exc


def register(registry: EventRegistry) -> EventRegistry:
    """Register a setup's revisions and the assistant's events in
    ``registry`` (trading.events.register does, for trading_registry()):
    a store opened with it validates every append of these types (also one
    made through the service's store.append tool), so a setup's stream
    cannot hold a revision that its readers would fail to decode."""
    registry.register(SETUP_REVISED, _RevisionData, time_field="occurred_at")
    registry.register(ASSISTANT_EVENT, _EventData, time_field="occurred_at")
    return registry
