"""Validation and encoding of appends, without a database: the field each
refusal names, the idempotency fingerprint, the wire payload, and uuid7."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import EventRegistry, NewEvent, ValidationError
from eventstore.codec import (
    PreparedAppend,
    _encode_checked,
    _shape_problem,
    check_stream_id,
    check_value,
    encoder,
    prepare_append,
)
from eventstore.events import uuid7
from eventstore.limits import BLANK_PATTERN, MAX_BATCH_BYTES
from trading import Trade, trading_registry

REGISTRY = trading_registry()

NOW = dt.datetime(2024, 6, 3, 14, 30, tzinfo=dt.UTC)


def prepare(
    events: Any,
    *,
    stream: Any = "acct-1",
    key: str | None = "k-1",
    registry: EventRegistry = REGISTRY,
    max_event_bytes: int = 1_000_000,
    max_batch_events: int = 100,
) -> PreparedAppend:
    return prepare_append(
        stream,
        events,
        registry=registry,
        idempotency_key=key,
        max_event_bytes=max_event_bytes,
        max_batch_events=max_batch_events,
    )


def deep(levels: int) -> dict[str, Any]:
    """An object nested ``levels`` deep (itself level 1)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def field_of(events: Any, **kwargs: Any) -> str | None:
    with pytest.raises(ValidationError) as info:
        prepare(events, **kwargs)
    assert info.value.operation == "append"
    return info.value.field


def trade_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "trade_id": "t-1",
        "portfolio_id": "p-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "price": "187.25",
        "executed_at": NOW.isoformat(),
    }
    data.update(changes)
    return data


# -- validation paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stream": ""}, "stream_id"),
        ({"stream": " \t "}, "stream_id"),
        ({"stream": "a\x00"}, "stream_id"),
        ({"stream": "a\x7f"}, "stream_id"),
        ({"stream": "a" * 201}, "stream_id"),
        ({"stream": None}, "stream_id"),
        ({"key": ""}, "idempotency_key"),
        ({"key": "k\x00"}, "idempotency_key"),
        ({"key": "k" * 201}, "idempotency_key"),
        # C1 controls, bidirectional and invisible formatting characters
        ({"stream": "portfolio-\u0085x"}, "stream_id"),
        ({"stream": "portfolio-\u202e42"}, "stream_id"),
        ({"stream": "portfolio-\u200b42"}, "stream_id"),
        ({"stream": "\ufeffportfolio-42"}, "stream_id"),
        ({"key": "order-\u2066-1"}, "idempotency_key"),
        # two spellings of one name: only the composed one (NFC)
        ({"stream": "portfolio-Ame\u0301lie"}, "stream_id"),
        ({"key": "cafe\u0301"}, "idempotency_key"),
    ],
)
def test_identifiers(kwargs: dict[str, Any], field: str) -> None:
    assert field_of([NewEvent("A", {})], **kwargs) == field


def test_composed_and_plain_non_ascii_identifiers_are_accepted() -> None:
    prepare([NewEvent("A", {})], stream="portfolio-Am\u00e9lie", key="caf\u00e9")
    prepare([NewEvent("A", {})], stream="portfolio-\u682a\u5f0f")


def test_identifier_limits_are_inclusive() -> None:
    prepare([NewEvent("A", {})], stream="s" * 200, key="k" * 200)
    prepare([NewEvent("A" + "b" * 127, {})])
    assert field_of([NewEvent("A" + "b" * 128, {})]) == "events[0].type"


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([], "events"),
        ((), "events"),
        (NewEvent("A", {}), "events"),
        ({"A": {}}, "events"),
        (iter([NewEvent("A", {})]), "events"),
        ([NewEvent("A", {}), "not an event"], "events[1]"),
        ([NewEvent("", {})], "events[0].type"),
        ([NewEvent("9A", {})], "events[0].type"),
        ([NewEvent("A B", {})], "events[0].type"),
        ([NewEvent("_A", {})], "events[0].type"),
        ([NewEvent("A\x00", {})], "events[0].type"),
        ([NewEvent(5, {})], "events[0].type"),  # type: ignore[arg-type]
        ([NewEvent("A", [])], "events[0].data"),
        ([NewEvent("A", "x")], "events[0].data"),
        ([NewEvent("A", None)], "events[0].data"),
        ([NewEvent("A", {}, [("k", "v")])], "events[0].metadata"),  # type: ignore[arg-type]
        ([NewEvent("A", {}, event_id="x")], "events[0].event_id"),  # type: ignore[arg-type]
        ([NewEvent("A", {1: "x"})], "events[0].data"),
        ([NewEvent("A", {"a": {2: "x"}})], "events[0].data.a"),
        ([NewEvent("A", {"x": math.nan})], "events[0].data.x"),
        ([NewEvent("A", {"x": -math.inf})], "events[0].data.x"),
        ([NewEvent("A", {"x": Decimal("NaN")})], "events[0].data.x"),
        ([NewEvent("A", {"x": Decimal("-Infinity")})], "events[0].data.x"),
        ([NewEvent("A", {"x": [0, [1, math.inf]]})], "events[0].data.x[1][1]"),
        ([NewEvent("A", {"x": [{"y": {"z": math.nan}}]})], "events[0].data.x[0].y.z"),
        ([NewEvent("A", {}, {"m": {"n": math.nan}})], "events[0].metadata.m.n"),
        ([NewEvent("A", {"s": "\x00"})], "events[0].data.s"),
        ([NewEvent("A", {"s": ["ok", "a\x00"]})], "events[0].data.s[1]"),
        ([NewEvent("A", {"\x00": 1})], "events[0].data"),
        ([NewEvent("A", {}, {"m": "\x00"})], "events[0].metadata.m"),
        ([NewEvent("A", {"symbol": ""})], "events[0].data.symbol"),
        ([NewEvent("A", {"symbol": None, "occurred_at": "soon"})], "events[0].data.occurred_at"),
        ([NewEvent("A", {"occurred_at": "2024-01-01T00:00:00"})], "events[0].data.occurred_at"),
        ([NewEvent("A", {"occurred_at": dt.date(2024, 1, 1)})], "events[0].data.occurred_at"),
        ([NewEvent("A", {}), NewEvent("B", {"x": math.nan})], "events[1].data.x"),
        ([NewEvent("A", {}, event_id=uuid.UUID(int=1))] * 2, "events[1].event_id"),
        ([NewEvent("A", {"s": "\udc80"})], "events[0].data.s"),
        # Times a reader could not load back (Python's years 1 to 9999).
        (
            [NewEvent("A", {"occurred_at": "0001-01-01T00:00:00+05:00"})],
            "events[0].data.occurred_at",
        ),
        (
            [NewEvent("A", {"occurred_at": "9999-12-31T23:00:00-05:00"})],
            "events[0].data.occurred_at",
        ),
        # What the database refuses too (eventstore/limits.py): times it would
        # read differently, numbers and nesting readers cannot decode.
        ([NewEvent("A", {"occurred_at": "infinity"})], "events[0].data.occurred_at"),
        (
            [NewEvent("A", {"occurred_at": "2024-01-01T00:00:00+16:00"})],
            "events[0].data.occurred_at",
        ),
        ([NewEvent("A", {"occurred_at": "2024-01-01 00:00:00Z"})], "events[0].data.occurred_at"),
        (
            [NewEvent("A", {"occurred_at": "2024-01-01T00:00:00.1234567Z"})],
            "events[0].data.occurred_at",
        ),
        ([NewEvent("A", {"occurred_at": "2023-02-29T00:00:00Z"})], "events[0].data.occurred_at"),
        (
            [
                NewEvent(
                    "A",
                    {
                        "occurred_at": dt.datetime(
                            2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=16))
                        )
                    },
                )
            ],
            "events[0].data.occurred_at",
        ),
        ([NewEvent("A", {"n": 10**300})], "events[0].data"),
        ([NewEvent("A", {"n": -(10**300)})], "events[0].data"),
        ([NewEvent("A", {"n": 1e-301})], "events[0].data"),
        ([NewEvent("A", {}, {"n": 1.5e300})], "events[0].metadata"),
        ([NewEvent("A", {"n": deep(65)})], "events[0].data"),
        ([NewEvent("A", {}, {"n": [deep(64)]})], "events[0].metadata"),
        ([NewEvent("A" + "b" * 128, {})], "events[0].type"),
        ([NewEvent("A", {"symbol": "\u3000"})], "events[0].data.symbol"),
    ],
)
def test_events(events: Any, field: str) -> None:
    assert field_of(events) == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"quantity": "0"}, "events[0].data.quantity"),
        ({"quantity": "-1"}, "events[0].data.quantity"),
        ({"quantity": "NaN"}, "events[0].data.quantity"),
        ({"quantity": "x"}, "events[0].data.quantity"),
        ({"price": "-0.01"}, "events[0].data.price"),
        ({"price": "Infinity"}, "events[0].data.price"),
        ({"fees": "-1"}, "events[0].data.fees"),
        ({"side": "short"}, "events[0].data.side"),
        ({"symbol": ""}, "events[0].data.symbol"),
        ({"symbol": "A B"}, "events[0].data.symbol"),
        ({"trade_id": ""}, "events[0].data.trade_id"),
        ({"portfolio_id": "\x00"}, "events[0].data.portfolio_id"),
        ({"order_id": ""}, "events[0].data.order_id"),
        ({"executed_at": "2024-06-03T14:30:00"}, "events[0].data.executed_at"),
        ({"executed_at": "not a time"}, "events[0].data.executed_at"),
        ({"executed_at": "0001-01-01T03:00:00+05:00"}, "events[0].data.executed_at"),
        ({"executed_at": "9999-12-31T20:00:00-05:00"}, "events[0].data.executed_at"),
        ({"extra": 1}, "events[0].data.extra"),  # not dropped silently
        ({"quantity": "1E+999999"}, "events[0].data.quantity"),
        ({"quantity": "1000000000000000"}, "events[0].data.quantity"),
        ({"price": "0.0000000000000000001"}, "events[0].data.price"),
        ({"fees": "1E+15"}, "events[0].data.fees"),
    ],
)
def test_registered_schema(changes: dict[str, Any], field: str) -> None:
    assert field_of([NewEvent("TradeExecuted", trade_dict(**changes))]) == field


def test_registered_schema_missing_field_names_it() -> None:
    data = trade_dict()
    del data["price"]
    with pytest.raises(ValidationError) as info:
        prepare([NewEvent("TradeExecuted", data)])
    assert info.value.field is not None and info.value.field.startswith("events[0].data")
    assert "price" in str(info.value)


def test_registered_schema_refuses_other_structs() -> None:
    class Other(msgspec.Struct):
        symbol: str

    assert field_of([NewEvent("TradeExecuted", Other("AAPL"))]) == "events[0].data"
    trade = msgspec.convert(trade_dict(), Trade)
    assert field_of([NewEvent("NotATrade", trade)]) == "events[0].type"


def test_limits() -> None:
    big = {"x": "y" * 100}
    size = len(msgspec.json.encode(big))
    prepare([NewEvent("A", big)], max_event_bytes=size)
    assert field_of([NewEvent("A", big)], max_event_bytes=size - 1) == "events[0].data"
    assert field_of([NewEvent("A", {}, big)], max_event_bytes=size) is not None
    prepare([NewEvent("A", {})] * 3, max_batch_events=3)
    assert field_of([NewEvent("A", {})] * 4, max_batch_events=3) == "events"


def test_error_carries_the_context() -> None:
    with pytest.raises(ValidationError) as info:
        prepare([NewEvent("A", {"x": math.nan})], stream="acct-9", key="key-9")
    error = info.value
    assert (error.stream_id, error.idempotency_key) == ("acct-9", "key-9")
    text = str(error)
    assert "events[0].data.x" in text and "acct-9" in text and "key-9" in text


# -- encoding ---------------------------------------------------------------------


def test_wire_payload() -> None:
    given_id = uuid.uuid4()
    prepared = prepare(
        [
            NewEvent(
                "Priced",
                {
                    "symbol": "AAPL",
                    "occurred_at": "2024-01-01T10:00:00+01:00",
                    "px": Decimal("1.10"),
                },
                {"m": 1},
                event_id=given_id,
            ),
            NewEvent("TradeExecuted", trade_dict()),
            NewEvent("Plain", {"n": 1}),
        ]
    )
    wire = msgspec.json.decode(prepared.payload)
    assert [w["type"] for w in wire] == ["Priced", "TradeExecuted", "Plain"]
    assert wire[0]["id"] == str(given_id) == str(prepared.event_ids[0])
    assert wire[0]["data"]["px"] == "1.10"
    assert wire[0]["metadata"] == {"m": 1}
    # the database derives symbol and business time from the data: not sent
    assert all("symbol" not in w and "occurred_at" not in w for w in wire)
    assert wire[0]["data"]["symbol"] == "AAPL"
    assert wire[0]["id_given"] is True
    assert "id_given" not in wire[1]  # False: the default, left out
    assert dt.datetime.fromisoformat(wire[1]["data"]["executed_at"]) == NOW
    assert wire[1]["data"]["quantity"] == "10"
    assert "metadata" not in wire[2]
    assert len(set(prepared.event_ids)) == 3
    assert all(isinstance(i, uuid.UUID) for i in prepared.event_ids)


# -- uuid7 --------------------------------------------------------------------------


def test_uuid7_version_variant_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    ms = value.int >> 80
    assert before <= ms <= after + 1


def test_uuid7_is_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(20_000)]  # many per millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)


def test_generated_event_ids_are_uuid7_in_batch_order() -> None:
    prepared = prepare([NewEvent("A", {"n": i}) for i in range(50)], key=None)
    assert all(i.version == 7 for i in prepared.event_ids)
    assert list(prepared.event_ids) == sorted(prepared.event_ids)


# -- registry ------------------------------------------------------------------------


def test_registry() -> None:
    class Opened(msgspec.Struct):
        owner: str
        at: dt.datetime

    class Other(msgspec.Struct):
        owner: str

    registry = EventRegistry()
    schema = registry.register("Opened", Opened, time_field="at")
    assert schema.symbol_field is None  # Opened has no symbol field
    assert registry.get("Opened") is schema
    assert registry.for_struct(Opened) is schema
    assert registry.names() == ["Opened"]
    registry.register("Opened", Opened, time_field="at")  # again, the same: fine
    with pytest.raises(ValueError, match="already registered"):
        registry.register("Opened", Other)
    with pytest.raises(ValueError, match="time_field"):
        registry.register("Closed", Other, time_field="at")
    # validated against its own registry, and its time field is extracted
    wire = msgspec.json.decode(
        prepare(
            [NewEvent("Opened", {"owner": "o", "at": NOW.isoformat()})], registry=registry
        ).payload
    )
    assert dt.datetime.fromisoformat(wire[0]["data"]["at"]) == NOW
    with pytest.raises(ValidationError) as info:
        prepare([NewEvent("Opened", {"owner": "o"})], registry=registry)
    assert info.value.field is not None and info.value.field.startswith("events[0].data")
    assert "TradeExecuted" in REGISTRY.names()


# The fast path (encode first; walk only on a hint in the output) refuses
# exactly what the full walk refuses, naming the same field.

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=[])),
    st.sampled_from(["a\x00b", "\ud800", "\\u0000", "null", "NaN", "Infinity", 'x NaN"']),
    st.just(NOW),
    st.just(uuid.UUID(int=7)),
)
_key = st.one_of(st.text(max_size=5), st.sampled_from(["k\x00", "\udc80", 1, None]))
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_key, inner, max_size=4)),
    max_leaves=12,
)


def _outcome(run: Any) -> tuple[str, str] | None:
    try:
        run()
    except ValidationError as exc:
        return ("refused", exc.field or "")
    return None


@given(data=st.dictionaries(_key, _values, max_size=5))
@settings(max_examples=400, deadline=None)
def test_fast_path_refuses_what_the_full_walk_refuses(data: dict[Any, Any]) -> None:
    ctx: dict[str, Any] = {"operation": "append"}

    def full() -> None:
        check_value(data, "events[0].data", ctx)
        try:
            encoded = encoder.encode(data)
        except (TypeError, UnicodeEncodeError, msgspec.EncodeError) as exc:
            raise ValidationError(str(exc), field="events[0].data") from exc
        # and the database's limits on numbers and nesting (eventstore/limits.py)
        if _shape_problem(encoded) is not None:
            raise ValidationError("out of limits", field="events[0].data")

    assert _outcome(lambda: _encode_checked(data, "events[0].data", ctx)) == _outcome(full)


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": "999999999999999.999999999999999999"},
        {"price": "0.000000000000000001"},
        {"price": "1.50000000000000000000000000"},  # trailing zeros are not places
        {"fees": "0E-40"},
        {"executed_at": "0001-01-02T00:00:00+00:00"},
        {"executed_at": "9999-12-30T00:00:00+00:00"},
    ],
)
def test_registered_schema_limits_are_inclusive(changes: dict[str, Any]) -> None:
    prepare([NewEvent("TradeExecuted", trade_dict(**changes))])


def test_a_trade_built_in_code_with_a_string_time_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as info:
        Trade(
            trade_id="t",
            portfolio_id="p",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(1),
            executed_at="2025-01-01T00:00:00Z",  # type: ignore[arg-type]
        )
    assert info.value.field == "executed_at"


def test_the_limits_themselves_are_accepted() -> None:
    prepare(
        [
            NewEvent(
                "A" + "b" * 127,
                {
                    "n": [10**300 - 1, -(10**300 - 1), 1e-300, 0, 0.0, 1e299],
                    "d": deep(63),
                    "occurred_at": "2024-02-29T23:59:59.123456-15:59",
                },
                {"d": deep(63), "s": "1e999 " + "9" * 400},
            )
        ]
    )


def test_strip_refuses_every_blank_the_database_refuses() -> None:
    """check_identifier tests blankness with str.strip(), not BLANK_PATTERN:
    every character the database's pattern calls blank is whitespace to
    Python, so nothing the database refuses as blank gets past the client."""
    blank = re.compile(BLANK_PATTERN)
    chars = [chr(c) for c in range(0x110000) if blank.fullmatch(chr(c))]
    assert len(chars) == 20 and all(c.isspace() for c in chars)
    for c in chars:
        with pytest.raises(ValidationError, match="must not be empty"):
            check_stream_id(c * 3)


@pytest.mark.parametrize(
    ("value", "flagged"),
    [
        (10**299, False),  # 300 digits: the longest legal integer starts a walk, passes it
        (10**300 - 1, False),
        (10**300, True),
        (-(10**300), True),
        ({"n": 10**300}, True),
        (1e-300, False),
        (1e-301, True),  # msgspec writes an exponent: flagged at any length
        (1e299, False),
        ({"n": "1" * 400}, False),  # digits in a string: hinted, not a number
        ({"n": 0}, False),
    ],
)
def test_the_number_hint_is_exact_at_its_length_boundary(value: Any, flagged: bool) -> None:
    encoded = encoder.encode(value)
    assert (_shape_problem(encoded) is not None) is flagged


@dataclasses.dataclass
class _Reading:
    value: float


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"p": _Reading(math.nan)}, "events[0].data.p.value"),
        ({"p": [_Reading(1.0), _Reading(-math.inf)]}, "events[0].data.p[1].value"),
    ],
)
def test_nan_inside_a_dataclass_is_refused_not_stored_as_null(
    data: dict[str, Any], field: str
) -> None:
    """msgspec writes a dataclass's NaN as null: silently changed data."""
    assert field_of([NewEvent("A", data)]) == field
    prepare([NewEvent("A", {"p": _Reading(1.5)})])


def test_a_batch_beyond_the_total_limit_is_refused_before_it_is_all_encoded() -> None:
    """300 events of ~1 MB went to the database and failed there after
    seconds and 1.4 GB of client memory: the batch's total is bounded, and
    the refusal names the first event past it."""
    blob = "x" * 1_000_000
    events = [NewEvent("A", {"blob": blob}) for _ in range(300)]
    with pytest.raises(ValidationError) as info:
        prepare(events, max_event_bytes=1_048_576, max_batch_events=10_000)
    assert info.value.field == f"events[{MAX_BATCH_BYTES // 1_000_012}]"
    assert str(MAX_BATCH_BYTES) in str(info.value)
