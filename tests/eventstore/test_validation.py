"""Bad input gets a clear error and writes nothing (docs/design.md §2, invariant 7).

Every case goes through the public API against the real database, carries an
idempotency key (so a stray key row would show), and checks that not one row
was added to utcp.stored_events or utcp.idempotency_keys. Malformed JSON is
a CLI concern, tested with the CLI.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest

from eventstore import (
    EventStore,
    NewEvent,
    Settings,
    StorageError,
    StorageUnavailable,
    ValidationError,
)
from tests.support.database import log_counts as counts
from trading import AuditEvent, StorageAdapter, Trade

SMALL_EVENT_BYTES = 1000
SMALL_BATCH = 5
NOW = dt.datetime(2024, 6, 3, 14, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def small_store(writer_dsn: str) -> Iterator[EventStore]:
    """A store with tight limits: events of at most 1000 bytes, 5 per append."""
    limits = Settings(
        pool_min_size=1,
        pool_max_size=2,
        max_event_bytes=SMALL_EVENT_BYTES,
        max_batch_events=SMALL_BATCH,
    )
    with EventStore.open(writer_dsn, limits) as s:
        yield s


def refused(
    admin: psycopg.Connection[Any], call: Callable[[], object], field: str | None
) -> ValidationError:
    """``call`` raises ValidationError naming ``field`` and writes nothing."""
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        call()
    assert counts(admin) == before, "a refused append wrote rows"
    if field is not None:
        assert info.value.field == field, str(info.value)
    assert info.value.field, "a ValidationError must name the field"
    return info.value


def trade_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "trade_id": f"t-{uuid.uuid4().hex}",
        "portfolio_id": "p-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "price": "187.25",
        "fees": "1.00",
        "executed_at": NOW.isoformat(),
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not _MISSING}


_MISSING = object()


def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


DEEP = _deep(5000)


def ev(data: Any, metadata: Any = None, type: str = "Generic") -> list[NewEvent]:
    return [NewEvent(type, data, metadata)]


# (case id, stream (None: a fresh one), events, expected field (None: see below))
APPEND_CASES: list[tuple[str, Any, Any, str | None]] = [
    # stream ids
    ("empty stream", "", ev({}), "stream_id"),
    ("blank stream", "   ", ev({}), "stream_id"),
    ("tab stream", "\t", ev({}), "stream_id"),
    ("NUL in stream", "acct-\x00", ev({}), "stream_id"),
    ("newline in stream", "acct-1\n2", ev({}), "stream_id"),
    ("long stream", "s" * 201, ev({}), "stream_id"),
    ("non-str stream", 42, ev({}), "stream_id"),  # type: ignore[list-item]
    # the batch itself
    ("empty batch", None, [], "events"),
    ("a bare NewEvent", None, NewEvent("A", {}), "events"),
    ("not a NewEvent", None, [{"type": "A", "data": {}}], "events[0]"),
    # type names
    ("empty type", None, ev({}, type=""), "events[0].type"),
    ("type starts with digit", None, ev({}, type="1Trade"), "events[0].type"),
    ("type with space", None, ev({}, type="Trade Executed"), "events[0].type"),
    ("type with NUL", None, ev({}, type="Trade\x00"), "events[0].type"),
    ("type with slash", None, ev({}, type="Trade/Executed"), "events[0].type"),
    ("non-ascii type", None, ev({}, type="Tradé"), "events[0].type"),
    ("long type", None, ev({}, type="T" * 129), "events[0].type"),
    # payload shape
    ("list data", None, ev([1, 2]), "events[0].data"),
    ("str data", None, ev("{}"), "events[0].data"),
    ("None data", None, ev(None), "events[0].data"),
    ("int data", None, ev(5), "events[0].data"),
    ("list metadata", None, ev({}, [1]), "events[0].metadata"),
    ("non-string key", None, ev({1: "x"}), "events[0].data"),
    ("bad event id", None, [NewEvent("A", {}, event_id="not-a-uuid")], "events[0].event_id"),  # type: ignore[arg-type]
    # empty symbols in a generic payload
    ("empty symbol", None, ev({"symbol": ""}), "events[0].data.symbol"),
    ("blank symbol", None, ev({"symbol": "  "}), "events[0].data.symbol"),
    ("NUL symbol", None, ev({"symbol": "AA\x00PL"}), "events[0].data.symbol"),
    ("non-str symbol", None, ev({"symbol": 7}), "events[0].data.symbol"),
    # business time
    (
        "naive occurred_at",
        None,
        ev({"occurred_at": "2024-01-01T00:00:00"}),
        "events[0].data.occurred_at",
    ),
    (
        "naive occurred_at dt",
        None,
        ev({"occurred_at": dt.datetime(2024, 1, 1)}),
        "events[0].data.occurred_at",
    ),
    ("garbage occurred_at", None, ev({"occurred_at": "yesterday"}), "events[0].data.occurred_at"),
    ("numeric occurred_at", None, ev({"occurred_at": 1700000000}), "events[0].data.occurred_at"),
    # NaN / Infinity, float and Decimal, nested, in metadata
    ("float nan", None, ev({"x": math.nan}), "events[0].data.x"),
    ("float inf", None, ev({"x": math.inf}), "events[0].data.x"),
    ("float -inf", None, ev({"x": -math.inf}), "events[0].data.x"),
    ("Decimal NaN", None, ev({"x": Decimal("NaN")}), "events[0].data.x"),
    ("Decimal sNaN", None, ev({"x": Decimal("sNaN")}), "events[0].data.x"),
    ("Decimal Infinity", None, ev({"x": Decimal("Infinity")}), "events[0].data.x"),
    ("Decimal -Infinity", None, ev({"x": Decimal("-Infinity")}), "events[0].data.x"),
    ("nan in list", None, ev({"a": [1, 2, math.nan]}), "events[0].data.a[2]"),
    ("inf in tuple", None, ev({"a": (1, math.inf)}), "events[0].data.a[1]"),
    (
        "nan in list of dicts",
        None,
        ev({"a": [{"b": 1}, {"b": Decimal("NaN")}]}),
        "events[0].data.a[1].b",
    ),
    ("nan deep in dicts", None, ev({"a": {"b": {"c": math.nan}}}), "events[0].data.a.b.c"),
    ("nan in metadata", None, ev({}, {"m": math.nan}), "events[0].metadata.m"),
    (
        "inf nested in metadata",
        None,
        ev({}, {"m": [{"n": Decimal("Infinity")}]}),
        "events[0].metadata.m[0].n",
    ),
    # NUL characters
    ("NUL in value", None, ev({"s": "a\x00b"}), "events[0].data.s"),
    ("NUL in nested value", None, ev({"a": ["ok", {"s": "\x00"}]}), "events[0].data.a[1].s"),
    ("NUL in key", None, ev({"k\x00": 1}), "events[0].data"),
    ("NUL in nested key", None, ev({"a": {"k\x00": 1}}), "events[0].data.a"),
    ("NUL in metadata value", None, ev({}, {"m": "\x00"}), "events[0].metadata.m"),
    ("NUL in metadata key", None, ev({}, {"\x00": "m"}), "events[0].metadata"),
    # text PostgreSQL cannot store: a lone surrogate is not UTF-8
    ("lone surrogate", None, ev({"s": "\ud800"}), "events[0].data.s"),
    ("lone surrogate in metadata", None, ev({}, {"m": "\udfff"}), "events[0].metadata.m"),
    ("lone surrogate in symbol", None, ev({"symbol": "\ud800"}), "events[0].data.symbol"),
    ("lone surrogate in stream", "acct-\ud800", ev({}), "stream_id"),
    # a registered event's schema: TradeExecuted
    ("trade missing field", None, ev(trade_data(price=_MISSING), type="TradeExecuted"), None),
    (
        "trade wrong type",
        None,
        ev(trade_data(quantity="ten"), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade list quantity",
        None,
        ev(trade_data(quantity=[1]), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade naive time",
        None,
        ev(trade_data(executed_at="2024-06-03T14:30:00"), type="TradeExecuted"),
        "events[0].data.executed_at",
    ),
    (
        "trade naive datetime",
        None,
        ev(trade_data(executed_at=dt.datetime(2024, 6, 3)), type="TradeExecuted"),
        "events[0].data.executed_at",
    ),
    (
        "trade bad side",
        None,
        ev(trade_data(side="hold"), type="TradeExecuted"),
        "events[0].data.side",
    ),
    (
        "trade zero quantity",
        None,
        ev(trade_data(quantity="0"), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade negative quantity",
        None,
        ev(trade_data(quantity="-5"), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade negative zero quantity",
        None,
        ev(trade_data(quantity=Decimal("-0")), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade negative price",
        None,
        ev(trade_data(price="-0.01"), type="TradeExecuted"),
        "events[0].data.price",
    ),
    (
        "trade negative fees",
        None,
        ev(trade_data(fees="-1"), type="TradeExecuted"),
        "events[0].data.fees",
    ),
    (
        "trade NaN quantity",
        None,
        ev(trade_data(quantity="NaN"), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "trade Infinity price",
        None,
        ev(trade_data(price="Infinity"), type="TradeExecuted"),
        "events[0].data.price",
    ),
    (
        "trade float nan price",
        None,
        ev(trade_data(price=math.nan), type="TradeExecuted"),
        "events[0].data.price",
    ),
    (
        "trade empty id",
        None,
        ev(trade_data(trade_id=""), type="TradeExecuted"),
        "events[0].data.trade_id",
    ),
    (
        "trade empty portfolio",
        None,
        ev(trade_data(portfolio_id=""), type="TradeExecuted"),
        "events[0].data.portfolio_id",
    ),
    (
        "trade empty symbol",
        None,
        ev(trade_data(symbol=""), type="TradeExecuted"),
        "events[0].data.symbol",
    ),
    (
        "trade NUL symbol",
        None,
        ev(trade_data(symbol="AA\x00PL"), type="TradeExecuted"),
        "events[0].data.symbol",
    ),
    (
        "trade NUL id",
        None,
        ev(trade_data(trade_id="t\x00"), type="TradeExecuted"),
        "events[0].data.trade_id",
    ),
    ("trade list payload", None, ev([trade_data()], type="TradeExecuted"), "events[0].data"),
    # what a reader could not load back, or the rules could not compute with
    (
        "year 1 east of UTC",
        None,
        ev({"occurred_at": "0001-01-01T01:00:00+05:00"}),
        "events[0].data.occurred_at",
    ),
    (
        "year 10000 in UTC",
        None,
        ev({"occurred_at": "9999-12-31T22:00:00-05:00"}),
        "events[0].data.occurred_at",
    ),
    (
        "huge quantity",
        None,
        ev(trade_data(quantity="1E+999999"), type="TradeExecuted"),
        "events[0].data.quantity",
    ),
    (
        "tiny price",
        None,
        ev(trade_data(price="1E-20000"), type="TradeExecuted"),
        "events[0].data.price",
    ),
    ("nested too deeply", None, ev(DEEP), "events[0].data"),
]


@pytest.mark.parametrize(
    "case", [pytest.param((s, e, f), id=name) for name, s, e, f in APPEND_CASES]
)
def test_bad_append_is_refused_and_writes_nothing(
    store: EventStore,
    admin: psycopg.Connection[Any],
    stream: str,
    case: tuple[str | None, Any, str | None],
) -> None:
    stream_id, events, field = case
    target = stream if stream_id is None else stream_id
    error = refused(
        admin,
        lambda: store.append(target, events, idempotency_key=f"k-{uuid.uuid4().hex}"),
        field,
    )
    assert error.operation == "append"
    if stream_id is None:
        assert store.stream_version(stream) == 0


def test_a_missing_schema_field_is_named(
    store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    events = ev(trade_data(price=_MISSING), type="TradeExecuted")
    error = refused(admin, lambda: store.append(stream, events), None)
    assert error.field is not None and error.field.startswith("events[0].data")
    assert "price" in str(error)


@pytest.mark.parametrize("key", ["", "  ", "k\x00", "k\n", "k" * 201, "k\ud800"])
def test_bad_idempotency_key_is_refused(
    store: EventStore, admin: psycopg.Connection[Any], stream: str, key: str
) -> None:
    refused(admin, lambda: store.append(stream, ev({}), idempotency_key=key), "idempotency_key")


# -- limits -------------------------------------------------------------------


def test_oversized_data_is_refused(
    small_store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    big = {"blob": "x" * SMALL_EVENT_BYTES}
    refused(
        admin,
        lambda: small_store.append(stream, ev(big), idempotency_key=uuid.uuid4().hex),
        "events[0].data",
    )
    batch = [NewEvent("Ok", {"n": 1}), NewEvent("Big", big)]
    refused(admin, lambda: small_store.append(stream, batch), "events[1].data")
    # just under the limit is fine
    fits = {"blob": "x" * (SMALL_EVENT_BYTES - 20)}
    assert small_store.append(stream, ev(fits)).last_version == 1


def test_oversized_metadata_is_refused(
    small_store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    error = refused(
        admin,
        lambda: small_store.append(stream, ev({"n": 1}, {"blob": "m" * SMALL_EVENT_BYTES})),
        None,
    )
    assert error.field is not None and error.field.startswith("events[0]")
    assert str(SMALL_EVENT_BYTES) in str(error)


def test_oversized_payload_with_default_limit_is_refused(
    store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    assert store.settings.max_event_bytes == 1_048_576
    huge = {"blob": "y" * (store.settings.max_event_bytes + 1)}
    refused(admin, lambda: store.append(stream, ev(huge)), "events[0].data")


def test_too_many_events_are_refused(
    small_store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    batch = [NewEvent("Step", {"n": i}) for i in range(SMALL_BATCH + 1)]
    refused(
        admin, lambda: small_store.append(stream, batch, idempotency_key=uuid.uuid4().hex), "events"
    )
    assert small_store.append(stream, batch[:SMALL_BATCH]).last_version == SMALL_BATCH


# -- registered payloads given as Structs, and the adapter ------------------------


def make_trade(**changes: Any) -> Trade:
    fields: dict[str, Any] = {
        "trade_id": f"t-{uuid.uuid4().hex}",
        "portfolio_id": f"p-{uuid.uuid4().hex[:8]}",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal("10"),
        "price": Decimal("187.25"),
        "executed_at": NOW,
    }
    fields.update(changes)
    return Trade(**fields)


def make_audit(**changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "id": f"a-{uuid.uuid4().hex}",
        "type": "SignalRaised",
        "symbol": "AAPL",
        "actor": "strategy-1",
        "occurred_at": NOW,
    }
    fields.update(changes)
    return AuditEvent(**fields)


@pytest.mark.parametrize(
    ("cls", "changes", "name"),
    [
        (Trade, {"trade_id": ""}, "trade_id"),
        (Trade, {"trade_id": "   "}, "trade_id"),
        (Trade, {"portfolio_id": ""}, "portfolio_id"),
        (Trade, {"symbol": ""}, "symbol"),
        (Trade, {"symbol": "AA\x00PL"}, "symbol"),
        (Trade, {"quantity": Decimal(0)}, "quantity"),
        (Trade, {"quantity": Decimal(-1)}, "quantity"),
        (Trade, {"quantity": Decimal("NaN")}, "quantity"),
        (Trade, {"price": Decimal("-0.01")}, "price"),
        (Trade, {"price": Decimal("Infinity")}, "price"),
        (Trade, {"fees": Decimal(-1)}, "fees"),
        (Trade, {"executed_at": dt.datetime(2024, 1, 1)}, "executed_at"),
        (AuditEvent, {"id": ""}, "id"),
        (AuditEvent, {"symbol": ""}, "symbol"),
        (AuditEvent, {"actor": ""}, "actor"),
        (AuditEvent, {"occurred_at": dt.datetime(2024, 1, 1)}, "occurred_at"),
    ],
)
def test_invalid_structs_cannot_be_built(
    cls: type[msgspec.Struct], changes: dict[str, Any], name: str
) -> None:
    make = make_trade if cls is Trade else make_audit
    with pytest.raises(ValueError, match=name):
        make(**changes)


@pytest.mark.parametrize(
    ("build", "field_suffix"),
    [
        # built in code, these skip the Meta constraints: the adapter checks them
        (lambda: make_trade(symbol="AA PL"), "symbol"),
        (lambda: make_trade(symbol="S" * 33), "symbol"),
        (lambda: make_trade(order_id=""), "order_id"),
        (lambda: make_trade(order_id="o\x00"), "order_id"),
    ],
    ids=["symbol-pattern", "symbol-length", "empty-order-id", "NUL-order-id"],
)
def test_adapter_refuses_invalid_trades(
    adapter: StorageAdapter,
    admin: psycopg.Connection[Any],
    build: Callable[[], Trade],
    field_suffix: str,
) -> None:
    # Built inside: a Struct refuses some values already in its constructor.
    error = refused(admin, lambda: adapter.save_trade(build()), None)
    assert error.field is not None and error.field.endswith(field_suffix), error.field


@pytest.mark.parametrize(
    ("build", "field_suffix"),
    [
        (lambda: make_audit(type="bad type"), "type"),
        (lambda: make_audit(type=""), "type"),
        (lambda: make_audit(type="Signal\x00"), "type"),
        (lambda: make_audit(symbol="AA PL"), "symbol"),
    ],
    ids=["type-space", "type-empty", "type-NUL", "symbol-pattern"],
)
def test_adapter_refuses_invalid_audit_events(
    adapter: StorageAdapter,
    admin: psycopg.Connection[Any],
    build: Callable[[], AuditEvent],
    field_suffix: str,
) -> None:
    error = refused(admin, lambda: adapter.save_audit_event(build()), None)
    assert error.field is not None and error.field.endswith(field_suffix), error.field


@pytest.mark.parametrize(
    ("details", "field"),
    [
        # paths relative to the AuditEvent passed to the adapter
        ({"score": math.nan}, "details.score"),
        ({"score": [Decimal("Infinity")]}, "details.score[0]"),
        ({"why": "a\x00b"}, "details.why"),
        ({"k\x00": 1}, "details"),
    ],
    ids=["float-nan", "Decimal-Infinity", "NUL-value", "NUL-key"],
)
def test_adapter_refuses_bad_audit_details(
    adapter: StorageAdapter, admin: psycopg.Connection[Any], details: dict[str, Any], field: str
) -> None:
    event = make_audit(details=details)
    refused(admin, lambda: adapter.save_audit_event(event), field)


def test_audit_event_cannot_pose_as_a_trade(
    adapter: StorageAdapter, admin: psycopg.Connection[Any]
) -> None:
    event = make_audit(type="TradeExecuted")
    refused(admin, lambda: adapter.save_audit_event(event), None)


def test_adapter_refuses_non_structs(
    adapter: StorageAdapter, admin: psycopg.Connection[Any]
) -> None:
    as_dict = msgspec.to_builtins(make_trade())
    refused(admin, lambda: adapter.save_trade(as_dict), "trade")  # type: ignore[arg-type]
    refused(admin, lambda: adapter.save_audit_event(make_trade()), "auditevent")  # type: ignore[arg-type]


def test_struct_of_another_type_is_refused(
    store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    # a Trade under another type name, and an AuditEvent under TradeExecuted
    refused(
        admin, lambda: store.append(stream, [NewEvent("Generic", make_trade())]), "events[0].type"
    )
    refused(
        admin,
        lambda: store.append(stream, [NewEvent("TradeExecuted", make_audit())]),
        "events[0].data",
    )


def test_a_valid_struct_bypassing_constructor_checks_is_still_validated(
    store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    # Meta constraints are not checked when a Struct is built in code
    trade = make_trade(symbol="not a ticker")
    refused(
        admin,
        lambda: store.append(stream, [NewEvent("TradeExecuted", trade)]),
        "events[0].data.symbol",
    )


@pytest.mark.parametrize(
    ("call", "field", "operation"),
    [
        (
            lambda s: s.append("acct-big", ev({}), expected_version=2**63),
            "expected_version",
            "append",
        ),
        (lambda s: s.read_stream("acct-1", from_version=True), "from_version", "read_stream"),
        (lambda s: s.read_stream("acct-1", from_version=2**63), "from_version", "read_stream"),
        (lambda s: s.read_all(limit=2**63), "limit", "read_all"),
        (lambda s: s.read_all(after="1/\u00b2"), "after", "read_all"),  # a superscript two
        (lambda s: s.read_all(after="\u0663/1"), "after", "read_all"),  # an Arabic-Indic three
        (lambda s: s.read_all(after=f"{2**64}/1"), "after", "read_all"),
        (lambda s: s.read_stream(""), "stream_id", "read_stream"),
        (lambda s: s.stream_version(None), "stream_id", "stream_version"),
    ],
)
def test_out_of_range_arguments_are_refused_by_name(
    store: EventStore, call: Callable[[EventStore], object], field: str, operation: str
) -> None:
    with pytest.raises(ValidationError) as info:
        call(store)
    assert (info.value.field, info.value.operation) == (field, operation)


@pytest.mark.parametrize(
    ("args", "field"), [((5,), "dsn"), (("x", {"pool_min_size": 1}), "settings")]
)
def test_open_refuses_arguments_of_the_wrong_type(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EventStore.open(*args)
    assert info.value.field == field


def test_open_without_permission_is_not_called_a_connection_problem(
    admin: psycopg.Connection[Any], database_dsn: str
) -> None:
    """Connected, but the role may not use the schema: a StorageError that
    says so, not the transient StorageUnavailable."""
    role = f"utcp_noperm_{uuid.uuid4().hex[:6]}"
    admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
    try:
        params = psycopg.conninfo.conninfo_to_dict(database_dsn)
        params["user"] = role
        with pytest.raises(StorageError) as info:
            EventStore.open(psycopg.conninfo.make_conninfo(**params))
        assert not isinstance(info.value, StorageUnavailable)
        assert info.value.sqlstate == "42501" and "permission denied" in str(info.value)
    finally:
        admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))
