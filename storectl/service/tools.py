"""Every tool the service offers: its name, description, tags, input and
output Structs (the manual's and OpenAPI's schemas come from these), the
least role that may call it, and its handler (synchronous: it runs in the
service's thread pool, on the synchronous store).

The assistant's four storage tools keep its exact names and JSON shapes
(Go ``libs/utcp/storage_types.go``); the store's own tools use the
library's snake_case names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

import msgspec

from eventstore import ANY, NO_STREAM, STREAM_EXISTS, EventStore, NewEvent, StoredEvent
from eventstore.chain import ChainReport
from eventstore.events import AppendResult, ExpectedVersion
from projections import queries
from projections.as_of import PortfolioAsOf, positions_as_of
from projections.models import Portfolio, Position
from projections.status import projection_status
from trading.adapter import StorageAdapter
from trading.events import CashDeposited, CashWithdrawn, PortfolioOpened, Trade, TradeCancelled
from trading.setups import (
    MAX_LIST_LIMIT,
    AssistantEvent,
    SetupRevision,
    SetupRisk,
    SetupStore,
    SetupView,
    TradeSetup,
)

from .errors import ToolError
from .keys import ApiKey, KeyCache, Role, add_key, list_keys, revoke_key

__all__ = ["TOOLS", "Empty", "Saved", "Tool", "ToolContext"]

_encode = msgspec.json.Encoder().encode

MAX_READ: Final = 1000
#: storage.list_trades stops adding setups before its reply passes this many
#: bytes: the assistant's client reads at most 1 MiB of a reply.
REPLY_BUDGET: Final = 512 * 1024
ReadLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_READ)]


class ToolContext:
    """What handlers work with: the store and the libraries on top of it."""

    def __init__(
        self,
        store: EventStore,
        *,
        keys_dsn: str | None = None,
        key_cache: KeyCache | None = None,
    ) -> None:
        self.store = store
        self.setups = SetupStore(store)
        self.adapter = StorageAdapter(store)
        #: A member of utcp_operator: the keys tools write through it (None:
        #: they answer 503; the service's own role may not write keys).
        self.keys_dsn = keys_dsn
        self.key_cache = key_cache


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str
    tags: tuple[str, ...]
    role: Role
    input: type[msgspec.Struct]
    output: type[Any]
    handler: Callable[[ToolContext, Any], Any]
    #: Writes the log (for the metrics' appends).
    writes: bool = False


# -- the assistant's storage tools (Go shapes) ---------------------------------


class Empty(msgspec.Struct):
    """A save's output: ``{}``."""


class Saved:
    """What a save handler returns: ``{}`` on the wire (:class:`Empty`); the
    service counts whether anything was written."""

    __slots__ = ("written",)

    def __init__(self, written: bool) -> None:
        self.written = written


class SaveEventInput(msgspec.Struct):
    event: AssistantEvent


class SaveTradeInput(msgspec.Struct, omit_defaults=True):
    trade: TradeSetup
    risk: SetupRisk | None = None
    event: AssistantEvent | None = None


class GetTradeInput(msgspec.Struct):
    id: str


class ListTradesInput(msgspec.Struct, omit_defaults=True, rename="camel"):
    symbol: str = ""
    strategy_id: str = ""
    limit: int = 0


class ListTradesOutput(msgspec.Struct):
    trades: list[SetupView]


class RevisionsInput(msgspec.Struct, rename="camel"):
    id: str
    #: The next page: the previous page's ``next``; 0, the first revision on.
    after_revision: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class RevisionsOutput(msgspec.Struct):
    revisions: list[SetupRevision]
    #: Pass as ``afterRevision`` for the next page; null: this page is the last.
    next: int | None = None


def _blank(value: str, tool: str, field: str) -> None:
    if not value.strip():
        raise ToolError(400, f"{tool}: {field} is required")


def save_event(ctx: ToolContext, body: SaveEventInput) -> Saved:
    return Saved(ctx.setups.save_event(body.event))


def save_trade(ctx: ToolContext, body: SaveTradeInput) -> Saved:
    return Saved(ctx.setups.save_setup(body.trade, body.risk, body.event))


def get_trade(ctx: ToolContext, body: GetTradeInput) -> SetupView:
    _blank(body.id, "storage.get_trade", "id")
    view = ctx.setups.get_setup(body.id)
    if view is None:
        raise ToolError(404, f"storage.get_trade: trade {body.id!r} not found")
    return view


def list_trades(ctx: ToolContext, body: ListTradesInput) -> ListTradesOutput:
    kept: list[SetupView] = []
    size = 0
    for view in ctx.setups.list_setups(body.symbol, body.strategy_id, body.limit):
        size += len(_encode(view)) + 1
        if size > REPLY_BUDGET:
            break
        kept.append(view)
    return ListTradesOutput(kept)


def list_trade_revisions(ctx: ToolContext, body: RevisionsInput) -> RevisionsOutput:
    _blank(body.id, "storage.list_trade_revisions", "id")
    page = MAX_LIST_LIMIT
    revisions = ctx.setups.revisions(body.id, page + 1, body.after_revision)
    if not revisions and body.after_revision == 0:
        raise ToolError(404, f"storage.list_trade_revisions: trade {body.id!r} not found")
    kept: list[SetupRevision] = []
    size = 0
    for revision in revisions[:page]:
        size += len(_encode(revision)) + 1
        if size > REPLY_BUDGET and kept:
            break
        kept.append(revision)
    more = len(kept) < len(revisions)
    return RevisionsOutput(kept, kept[-1].revision if more else None)


# -- the store's own tools -------------------------------------------------------


class EventIn(msgspec.Struct, kw_only=True):
    """One event to append."""

    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None
    #: Fixed by the caller (a UUID) or generated.
    event_id: uuid.UUID | None = None


class AppendInput(msgspec.Struct, kw_only=True):
    stream: str
    events: list[EventIn]
    #: "any", "no_stream", "stream_exists", or the version the stream is at now.
    expected_version: int | Literal["any", "no_stream", "stream_exists"] = "any"
    #: A repeat with the same key writes nothing. Without one, the key is
    #: derived from the request: an identical append is recorded once (give
    #: event ids or a key to record identical events twice).
    idempotency_key: str | None = None


class AppendOutput(msgspec.Struct):
    stream: str
    first_version: int
    last_version: int
    positions: list[int]
    #: True: this request was recorded before; nothing was written now.
    duplicate: bool


class EventOut(msgspec.Struct):
    position: int
    checkpoint: str
    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    data: dict[str, Any] | None
    metadata: dict[str, Any] | None
    symbol: str | None
    occurred_at: dt.datetime
    created_at: dt.datetime
    hash: str
    prev_hash: str | None


class EventsOutput(msgspec.Struct):
    events: list[EventOut]


class ReadStreamInput(msgspec.Struct, kw_only=True):
    stream: str
    from_version: Annotated[int, msgspec.Meta(ge=1)] = 1
    limit: ReadLimit = 100


class ReadLogInput(msgspec.Struct, kw_only=True):
    #: A checkpoint from a previous page's ``next`` (or any event's); none: the start.
    after: str | None = None
    limit: ReadLimit = 100
    types: list[str] | None = None


class ReadLogOutput(msgspec.Struct):
    events: list[EventOut]
    #: Pass as ``after`` for the next page.
    next: str | None


class RecordTradeInput(msgspec.Struct, kw_only=True):
    trade: Trade
    idempotency_key: str | None = None


class OpenPortfolioInput(msgspec.Struct, kw_only=True):
    portfolio: PortfolioOpened
    idempotency_key: str | None = None


class DepositInput(msgspec.Struct, kw_only=True):
    deposit: CashDeposited
    idempotency_key: str | None = None


class WithdrawInput(msgspec.Struct, kw_only=True):
    withdrawal: CashWithdrawn
    idempotency_key: str | None = None


class CancelInput(msgspec.Struct, kw_only=True):
    cancel: TradeCancelled
    idempotency_key: str | None = None


class PortfolioInput(msgspec.Struct, kw_only=True):
    portfolio_id: str


class Lag(msgspec.Struct):
    """How far the projection is behind the log when it answered."""

    events: int
    seconds: float
    checkpoint: str


class PositionsOutput(msgspec.Struct):
    positions: list[Position]
    lag: Lag


class PortfolioOutput(msgspec.Struct):
    portfolio: Portfolio | None
    lag: Lag


class AsOfInput(msgspec.Struct, kw_only=True):
    portfolio_id: str
    as_of: Annotated[dt.datetime, msgspec.Meta(tz=True)]


class AuditQueryInput(msgspec.Struct, kw_only=True):
    type: str | None = None
    symbol: str | None = None
    category: str | None = None
    stream: str | None = None
    since: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    until: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    limit: ReadLimit = 100
    #: The previous page's ``next``: the events after it.
    after: str | None = None


class AuditPage(msgspec.Struct):
    events: list[EventOut]
    #: Pass as ``after`` for the next page; null when there is no more.
    next: str | None = None


class VerifyInput(msgspec.Struct, kw_only=True):
    stream: str | None = None


class VerifyOutput(msgspec.Struct):
    ok: bool
    report: ChainReport


def _event_out(event: StoredEvent) -> EventOut:
    return EventOut(
        position=event.position,
        checkpoint=event.checkpoint,
        event_id=event.event_id,
        stream=event.stream_id,
        version=event.stream_version,
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        symbol=event.symbol,
        occurred_at=event.occurred_at,
        created_at=event.created_at,
        hash=event.hash.hex(),
        prev_hash=None if event.prev_hash is None else event.prev_hash.hex(),
    )


def _append_out(result: AppendResult) -> AppendOutput:
    return AppendOutput(
        result.stream_id,
        result.first_version,
        result.last_version,
        list(result.positions),
        result.duplicate,
    )


_EXPECTED: Final[dict[str, ExpectedVersion]] = {
    "any": ANY,
    "no_stream": NO_STREAM,
    "stream_exists": STREAM_EXISTS,
}


def append(ctx: ToolContext, body: AppendInput) -> AppendOutput:
    if not body.events:
        raise ToolError(400, "store.append: events must hold at least one event")
    expected = (
        _EXPECTED[body.expected_version]
        if isinstance(body.expected_version, str)
        else body.expected_version
    )
    key = body.idempotency_key
    if key is None:
        digest = hashlib.sha256(
            msgspec.json.encode([body.stream, str(body.expected_version), body.events])
        ).hexdigest()
        key = f"tool:{digest}"
    events = [NewEvent(e.type, e.data, e.metadata, e.event_id) for e in body.events]
    result = ctx.store.append(body.stream, events, expected_version=expected, idempotency_key=key)
    return _append_out(result)


def read_stream(ctx: ToolContext, body: ReadStreamInput) -> EventsOutput:
    events = ctx.store.read_stream(body.stream, from_version=body.from_version, limit=body.limit)
    return EventsOutput([_event_out(e) for e in events])


def read_log(ctx: ToolContext, body: ReadLogInput) -> ReadLogOutput:
    events = ctx.store.read_all(after=body.after, limit=body.limit, types=body.types)
    nxt = events[-1].checkpoint if events else body.after
    return ReadLogOutput([_event_out(e) for e in events], nxt)


def record_trade(ctx: ToolContext, body: RecordTradeInput) -> AppendOutput:
    return _append_out(ctx.adapter.save_trade(body.trade, idempotency_key=body.idempotency_key))


def open_portfolio(ctx: ToolContext, body: OpenPortfolioInput) -> AppendOutput:
    return _append_out(
        ctx.adapter.open_portfolio(body.portfolio, idempotency_key=body.idempotency_key)
    )


def deposit_cash(ctx: ToolContext, body: DepositInput) -> AppendOutput:
    return _append_out(ctx.adapter.deposit_cash(body.deposit, idempotency_key=body.idempotency_key))


def withdraw_cash(ctx: ToolContext, body: WithdrawInput) -> AppendOutput:
    return _append_out(
        ctx.adapter.withdraw_cash(body.withdrawal, idempotency_key=body.idempotency_key)
    )


def cancel_trade(ctx: ToolContext, body: CancelInput) -> AppendOutput:
    return _append_out(ctx.adapter.cancel_trade(body.cancel, idempotency_key=body.idempotency_key))


def _lag(ctx: ToolContext) -> Lag:
    status = projection_status(ctx.store, "trading")
    return Lag(status.lag_events, status.lag_seconds, status.checkpoint)


def get_positions(ctx: ToolContext, body: PortfolioInput) -> PositionsOutput:
    lag = _lag(ctx)
    return PositionsOutput(queries.get_positions(ctx.store, body.portfolio_id), lag)


def get_portfolio(ctx: ToolContext, body: PortfolioInput) -> PortfolioOutput:
    lag = _lag(ctx)
    return PortfolioOutput(queries.get_portfolio(ctx.store, body.portfolio_id), lag)


def as_of(ctx: ToolContext, body: AsOfInput) -> PortfolioAsOf:
    return positions_as_of(ctx.store, body.portfolio_id, body.as_of)


def audit_query(ctx: ToolContext, body: AuditQueryInput) -> AuditPage:
    page = ctx.store.find_events(
        type=body.type,
        symbol=body.symbol,
        category=body.category,
        stream_id=body.stream,
        since=body.since,
        until=body.until,
        limit=body.limit,
        after=body.after,
    )
    return AuditPage([_event_out(e) for e in page.items], page.next)


def verify(ctx: ToolContext, body: VerifyInput) -> VerifyOutput:
    report = ctx.store.verify_chain(body.stream)
    return VerifyOutput(report.ok, report)


# -- API keys (admin; written through the operator's DSN, --keys-dsn) ------------------

NO_KEYS_DSN: Final = (
    "key management over HTTP needs the service to be started with --keys-dsn "
    "(a member of utcp_operator); or use `eventstore keys`"
)


class KeysAddInput(msgspec.Struct, kw_only=True):
    #: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
    name: str
    role: Role


class KeyAdded(msgspec.Struct, kw_only=True):
    name: str
    role: str
    created_at: dt.datetime
    #: The key's secret: shown in this reply only, never again (only its hash is kept).
    key: str


class KeysListInput(msgspec.Struct, kw_only=True):
    """No input."""


class KeysListOutput(msgspec.Struct):
    #: Every key (active and revoked): names and roles, never secrets or hashes.
    keys: list[ApiKey]


class KeysRevokeInput(msgspec.Struct, kw_only=True):
    name: str


def _keys_dsn(ctx: ToolContext, tool: str) -> str:
    if ctx.keys_dsn is None:
        raise ToolError(503, f"{tool}: {NO_KEYS_DSN}")
    return ctx.keys_dsn


def keys_add(ctx: ToolContext, body: KeysAddInput) -> KeyAdded:
    key, secret = add_key(_keys_dsn(ctx, "keys.add"), body.name, body.role)
    return KeyAdded(name=key.name, role=key.role, created_at=key.created_at, key=secret)


def keys_list(ctx: ToolContext, body: KeysListInput) -> KeysListOutput:
    return KeysListOutput(list_keys(ctx.store))


def keys_revoke(ctx: ToolContext, body: KeysRevokeInput) -> ApiKey:
    revoked = revoke_key(_keys_dsn(ctx, "keys.revoke"), body.name)
    if ctx.key_cache is not None:
        ctx.key_cache.forget(revoked.name)  # refused from the next call on, not after the TTL
    return revoked


TOOLS: Final[dict[str, Tool]] = {
    tool.name: tool
    for tool in (
        Tool(
            "storage.save_event",
            "Save one of the assistant's events (a signal, a decision) in the append-only "
            "audit log. Saving the same id with the same content again writes nothing; the "
            "same id with different content is refused (409): the log never overwrites.",
            ("storage", "assistant", "write"),
            "writer",
            SaveEventInput,
            Empty,
            save_event,
            writes=True,
        ),
        Tool(
            "storage.save_trade",
            "Save a trade setup (entry, stop, targets, strategy) with its sized risk and "
            "signal event. Saving it again under the same id records a new revision (the "
            "first createdAt is kept); an identical save writes nothing. All or nothing.",
            ("storage", "assistant", "write", "setups"),
            "writer",
            SaveTradeInput,
            Empty,
            save_trade,
            writes=True,
        ),
        Tool(
            "storage.get_trade",
            "Get a trade setup's latest revision by id, with its risk and linked event. "
            "404 when no setup has that id.",
            ("storage", "assistant", "read", "setups"),
            "reader",
            GetTradeInput,
            SetupView,
            get_trade,
        ),
        Tool(
            "storage.list_trades",
            "List trade setups (latest revisions), newest first, optionally by symbol and/or "
            "strategyId; limit defaults to 100 and is capped at 500 (and so that the reply "
            "stays under 512 KiB).",
            ("storage", "assistant", "read", "setups"),
            "reader",
            ListTradesInput,
            ListTradesOutput,
            list_trades,
        ),
        Tool(
            "storage.list_trade_revisions",
            "Every recorded revision of one trade setup, oldest first, with when each was "
            "recorded: how a setup changed over time. In pages (at most 500 revisions, and "
            "under 512 KiB): pass a page's next as afterRevision for the next one.",
            ("storage", "assistant", "read", "setups", "history"),
            "reader",
            RevisionsInput,
            RevisionsOutput,
            list_trade_revisions,
        ),
        Tool(
            "store.append",
            "Append events to one stream of the audit log in one transaction, with an "
            "optional expected version (optimistic concurrency) and idempotency key.",
            ("store", "write", "log"),
            "writer",
            AppendInput,
            AppendOutput,
            append,
            writes=True,
        ),
        Tool(
            "store.read_stream",
            "Read one stream's events in version order (paged by from_version and limit).",
            ("store", "read", "log"),
            "reader",
            ReadStreamInput,
            EventsOutput,
            read_stream,
        ),
        Tool(
            "store.read_log",
            "Read the whole audit log in its one global order, a page at a time: pass the "
            "previous page's next as after. Every committed event appears exactly once.",
            ("store", "read", "log"),
            "reader",
            ReadLogInput,
            ReadLogOutput,
            read_log,
        ),
        Tool(
            "trading.record_trade",
            "Record an executed trade (a fill: side, quantity, price, fees) in its "
            "portfolio; recorded once per trade_id.",
            ("trading", "write", "portfolio"),
            "writer",
            RecordTradeInput,
            AppendOutput,
            record_trade,
            writes=True,
        ),
        Tool(
            "trading.open_portfolio",
            "Open a portfolio (before any cash or trade goes to it).",
            ("trading", "write", "portfolio"),
            "writer",
            OpenPortfolioInput,
            AppendOutput,
            open_portfolio,
            writes=True,
        ),
        Tool(
            "trading.deposit_cash",
            "Deposit cash into an open portfolio.",
            ("trading", "write", "portfolio", "cash"),
            "writer",
            DepositInput,
            AppendOutput,
            deposit_cash,
            writes=True,
        ),
        Tool(
            "trading.withdraw_cash",
            "Withdraw cash from an open portfolio.",
            ("trading", "write", "portfolio", "cash"),
            "writer",
            WithdrawInput,
            AppendOutput,
            withdraw_cash,
            writes=True,
        ),
        Tool(
            "trading.cancel_trade",
            "Cancel an executed trade (busted, booked in error): positions are recomputed "
            "as if it had never happened.",
            ("trading", "write", "portfolio"),
            "writer",
            CancelInput,
            AppendOutput,
            cancel_trade,
            writes=True,
        ),
        Tool(
            "trading.get_positions",
            "A portfolio's positions (average cost, realized P&L, fees) as projected now, "
            "with how far the projection lags the log.",
            ("trading", "read", "portfolio", "positions"),
            "reader",
            PortfolioInput,
            PositionsOutput,
            get_positions,
        ),
        Tool(
            "trading.get_portfolio",
            "A portfolio's cash, realized P&L and fees as projected now, with the "
            "projection's lag.",
            ("trading", "read", "portfolio"),
            "reader",
            PortfolioInput,
            PortfolioOutput,
            get_portfolio,
        ),
        Tool(
            "trading.positions_as_of",
            "What a portfolio held at a past time T (as the log stood then): positions and "
            "cash replayed from the log, not from the projection.",
            ("trading", "read", "portfolio", "positions", "history"),
            "reader",
            AsOfInput,
            PortfolioAsOf,
            as_of,
        ),
        Tool(
            "audit.query",
            "Query audit-log events by type, symbol, stream category or stream, within a "
            "business-time range [since, until), in time order, a page at a time: pass the "
            "answer's `next` as `after` for the next page.",
            ("audit", "read", "log"),
            "reader",
            AuditQueryInput,
            AuditPage,
            audit_query,
        ),
        Tool(
            "store.verify",
            "Verify the log's tamper evidence: recompute every hash and chain (and anchors), "
            "for the whole log or one stream. Admin only.",
            ("store", "admin", "integrity"),
            "admin",
            VerifyInput,
            VerifyOutput,
            verify,
        ),
        Tool(
            "keys.add",
            "Make a new API key with a role (reader, writer or admin). The reply holds its "
            "secret, shown this once and never again. Admin only; needs the service's "
            "--keys-dsn (503 without).",
            ("keys", "admin", "write"),
            "admin",
            KeysAddInput,
            KeyAdded,
            keys_add,
        ),
        Tool(
            "keys.list",
            "Every API key: name, role, when made and when revoked (never a secret or hash). "
            "Admin only.",
            ("keys", "admin", "read"),
            "admin",
            KeysListInput,
            KeysListOutput,
            keys_list,
        ),
        Tool(
            "keys.revoke",
            "Revoke an API key by name, for good: it is refused from the next call on, and "
            "its name stays taken. Admin only; needs the service's --keys-dsn (503 without).",
            ("keys", "admin", "write"),
            "admin",
            KeysRevokeInput,
            ApiKey,
            keys_revoke,
        ),
    )
}
