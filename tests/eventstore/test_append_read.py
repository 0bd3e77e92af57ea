"""Append and read round trips, and optimistic concurrency per stream
(DESIGN.md §2, invariant 3), against the real database through the public API."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventStore,
    NewEvent,
    StoredEvent,
    ValidationError,
    WrongExpectedVersion,
)
from trading import Trade, trading_registry

REGISTRY = trading_registry()

#: How long to wait for the global readers' horizon to pass our events.
#: A long transaction elsewhere on the shared cluster only delays them.
HORIZON_WAIT = 60.0


def counts(admin: psycopg.Connection[Any]) -> tuple[int, int]:
    row = admin.execute(
        "SELECT (SELECT count(*) FROM utcp.stored_events),"
        " (SELECT count(*) FROM utcp.idempotency_keys)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def read_all_until(store: EventStore, after: str | None, want: set[int]) -> list[StoredEvent]:
    """Page through read_all from ``after`` until every position in ``want``
    has been seen (or the wait runs out; the caller's assertions then fail)."""
    seen: list[StoredEvent] = []
    checkpoint = after
    deadline = time.monotonic() + HORIZON_WAIT
    while True:
        page = store.read_all(after=checkpoint, limit=1000)
        if page:
            seen.extend(page)
            checkpoint = page[-1].checkpoint
            continue
        if want <= {e.position for e in seen} or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


class Note(msgspec.Struct, frozen=True):
    """An unregistered payload Struct with the fields the store indexes."""

    text: str
    symbol: str
    occurred_at: dt.datetime


# -- round trips --------------------------------------------------------------


def test_round_trip_keeps_data_metadata_type_and_ids(store: EventStore, stream: str) -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    given_id = uuid.uuid4()
    data: dict[str, Any] = {
        "amount": Decimal("100.10"),
        "note": 'ünïcödé ✓ "quoted" \\ back',
        "nested": {"list": [1, 2.5, True, None, "x"], "empty": {}},
        "when": when,
        "big": 2**70,
    }
    metadata = {"correlation_id": "c-1", "actor": "bot", "tags": ["a", "b"]}
    result = store.append(
        stream,
        [
            NewEvent("FundsNoted", data, metadata, event_id=given_id),
            NewEvent("NoteTaken", {"text": "second"}),
        ],
        expected_version=NO_STREAM,
    )
    assert isinstance(result, AppendResult)
    assert result.stream_id == stream
    assert (result.first_version, result.last_version) == (1, 2)
    assert result.duplicate is False
    assert len(result.positions) == 2
    assert result.positions[0] < result.positions[1]

    events = store.read_stream(stream)
    assert [e.stream_version for e in events] == [1, 2]
    assert tuple(e.position for e in events) == result.positions
    first, second = events
    assert isinstance(first, StoredEvent)
    assert first.stream_id == stream
    assert first.event_id == given_id
    assert isinstance(second.event_id, uuid.UUID)
    assert second.event_id != given_id
    assert first.type == "FundsNoted"
    assert second.type == "NoteTaken"
    assert first.data == {
        "amount": "100.10",  # Decimal travels as a string, exactly
        "note": data["note"],
        "nested": {"list": [1, 2.5, True, None, "x"], "empty": {}},
        "when": first.data["when"],
        "big": 2**70,
    }
    assert dt.datetime.fromisoformat(first.data["when"]) == when
    assert first.metadata == metadata
    assert second.metadata is None
    assert second.data == {"text": "second"}
    # no symbol / occurred_at in the payload: none indexed, business time = record time
    assert first.symbol is None
    assert first.occurred_at == first.created_at
    assert first.created_at.tzinfo is not None
    assert first.created_at == second.created_at  # one transaction
    assert isinstance(first.hash, bytes) and len(first.hash) == 32
    assert first.prev_hash is None
    assert second.prev_hash == first.hash
    assert first.checkpoint != second.checkpoint


@pytest.mark.parametrize(
    "text",
    [
        "0.1000000000000000055",
        "1.10",
        "-0",
        "0E-30",
        "123456789012345678901234567890.123456789012345678901234567890",
        "1E+400",
        "-0.000000000000000000000001",
    ],
)
def test_decimals_are_stored_as_exact_strings(store: EventStore, stream: str, text: str) -> None:
    store.append(stream, [NewEvent("Priced", {"value": Decimal(text), "list": [Decimal(text)]})])
    (event,) = store.read_stream(stream)
    assert event.data["value"] == str(Decimal(text))
    assert event.data["list"] == [str(Decimal(text))]
    assert Decimal(event.data["value"]) == Decimal(text)
    assert Decimal(event.data["value"]).as_tuple() == Decimal(text).as_tuple()


def test_trade_payload_round_trips_exactly_and_indexes_symbol_and_time(
    store: EventStore, stream: str
) -> None:
    trade = Trade(
        trade_id=f"t-{uuid.uuid4().hex}",
        portfolio_id="p-1",
        symbol="BRK.B",
        side="sell",
        quantity=Decimal("0.000000001"),
        price=Decimal("12345.6789012345678901"),
        fees=Decimal("0.10"),
        executed_at=dt.datetime(2024, 1, 2, 15, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        order_id="o-9",
    )
    store.append(stream, [NewEvent("TradeExecuted", trade)])
    (event,) = store.read_stream(stream)
    # Decimals are stored as their exact str(): same digits, same exponent
    assert event.data["quantity"] == str(trade.quantity) == "1E-9"
    assert event.data["price"] == "12345.6789012345678901"
    assert event.data["fees"] == "0.10"
    assert event.symbol == "BRK.B"
    assert event.occurred_at == trade.executed_at
    decoded = REGISTRY.decode(event)
    assert decoded == trade
    assert str(decoded.price) == "12345.6789012345678901"


def test_symbol_and_occurred_at_come_from_a_generic_payload(store: EventStore, stream: str) -> None:
    store.append(
        stream,
        [
            NewEvent(
                "SignalRaised", {"symbol": "AAPL", "occurred_at": "2024-03-01T10:00:00+02:00"}
            ),
            NewEvent(
                "NoteTaken",
                Note(
                    text="x",
                    symbol="MSFT",
                    occurred_at=dt.datetime(2023, 12, 31, 23, 59, tzinfo=dt.UTC),
                ),
            ),
        ],
    )
    first, second = store.read_stream(stream)
    assert first.symbol == "AAPL"
    assert first.occurred_at == dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)
    assert second.symbol == "MSFT"
    assert second.occurred_at == dt.datetime(2023, 12, 31, 23, 59, tzinfo=dt.UTC)
    assert second.data["text"] == "x"


def test_positions_and_checkpoints_match_read_all(store: EventStore, stream: str) -> None:
    first = store.append(stream, [NewEvent("Opened", {"n": 0})])
    (opened,) = store.read_stream(stream)
    assert opened.position == first.positions[0]
    batch = store.append(stream, [NewEvent("Step", {"n": i}) for i in range(1, 6)])
    single = store.append(stream, [NewEvent("Closed", {"n": 6})])
    written = batch.positions + single.positions

    seen = [
        e for e in read_all_until(store, opened.checkpoint, set(written)) if e.stream_id == stream
    ]
    assert tuple(e.position for e in seen) == written
    assert [e.stream_version for e in seen] == list(range(2, 8))
    # read_all returns the very same envelopes as read_stream
    assert seen == store.read_stream(stream, from_version=2)
    # a checkpoint means "everything after this event"
    middle = seen[2]
    rest = [
        e
        for e in read_all_until(store, middle.checkpoint, set(written[3:]))
        if e.stream_id == stream
    ]
    assert [e.stream_version for e in rest] == [5, 6, 7]
    # the type filter
    closed_only = store.read_all(after=opened.checkpoint, types=["Closed"])
    assert [e.position for e in closed_only if e.stream_id == stream] == list(single.positions)
    assert all(e.type == "Closed" for e in closed_only)


def test_read_all_refuses_malformed_arguments(store: EventStore) -> None:
    for bad in ("", "abc", "1/", "/2", "1-2", "x/1"):
        with pytest.raises(ValidationError) as info:
            store.read_all(after=bad)
        assert info.value.field == "after"
    for limit in (0, -1, True):
        with pytest.raises(ValidationError) as info:
            store.read_all(limit=limit)
        assert info.value.field == "limit"
    with pytest.raises(ValidationError) as info:
        store.read_all(types="TradeExecuted")  # a str is not a list of names
    assert info.value.field == "types"


def test_read_stream_from_version_and_limit(store: EventStore, stream: str) -> None:
    store.append(stream, [NewEvent("Step", {"n": i}) for i in range(1, 6)])
    versions = lambda events: [e.stream_version for e in events]  # noqa: E731
    assert versions(store.read_stream(stream)) == [1, 2, 3, 4, 5]
    assert versions(store.read_stream(stream, from_version=3)) == [3, 4, 5]
    assert versions(store.read_stream(stream, limit=2)) == [1, 2]
    assert versions(store.read_stream(stream, from_version=3, limit=1)) == [3]
    assert versions(store.read_stream(stream, from_version=5, limit=10)) == [5]
    assert store.read_stream(stream, from_version=6) == []
    assert store.read_stream(f"{stream}-missing") == []
    assert [e.data["n"] for e in store.read_stream(stream, from_version=2, limit=3)] == [2, 3, 4]
    for bad in (0, -1):
        with pytest.raises(ValidationError) as info:
            store.read_stream(stream, from_version=bad)
        assert info.value.field == "from_version"
    with pytest.raises(ValidationError) as info:
        store.read_stream(stream, limit=0)
    assert info.value.field == "limit"
    with pytest.raises(ValidationError) as info:
        store.read_stream("")
    assert info.value.field == "stream_id"


def test_stream_version(store: EventStore, stream: str) -> None:
    assert store.stream_version(stream) == 0
    store.append(stream, [NewEvent("A", {}), NewEvent("B", {})])
    assert store.stream_version(stream) == 2
    store.append(stream, [NewEvent("C", {})])
    assert store.stream_version(stream) == 3
    assert store.stream_version(f"{stream}-other") == 0


# -- expected_version ---------------------------------------------------------


def test_expected_version_any(store: EventStore, stream: str) -> None:
    assert store.append(stream, [NewEvent("A", {})], expected_version=ANY).last_version == 1
    assert store.append(stream, [NewEvent("A", {})]).last_version == 2  # ANY is the default
    assert store.append(stream, [NewEvent("A", {})], expected_version=ANY).first_version == 3


def test_expected_version_no_stream(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    result = store.append(stream, [NewEvent("A", {})], expected_version=NO_STREAM)
    assert (result.first_version, result.last_version) == (1, 1)
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        store.append(stream, [NewEvent("A", {})], expected_version=NO_STREAM)
    assert info.value.expected is NO_STREAM
    assert info.value.actual == 1
    assert info.value.stream_id == stream
    assert counts(admin) == before
    assert store.stream_version(stream) == 1


def test_expected_version_zero_is_no_stream(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    assert store.append(stream, [NewEvent("A", {})], expected_version=0).last_version == 1
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        store.append(stream, [NewEvent("A", {})], expected_version=0)
    assert info.value.expected == 0
    assert info.value.actual == 1
    assert counts(admin) == before


def test_expected_version_stream_exists(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        store.append(stream, [NewEvent("A", {})], expected_version=STREAM_EXISTS)
    assert info.value.expected is STREAM_EXISTS
    assert info.value.actual == 0
    assert counts(admin) == before
    assert store.stream_version(stream) == 0
    store.append(stream, [NewEvent("A", {})])
    result = store.append(stream, [NewEvent("B", {})], expected_version=STREAM_EXISTS)
    assert (result.first_version, result.last_version) == (2, 2)


def test_expected_version_int(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    store.append(stream, [NewEvent("A", {}), NewEvent("A", {})], expected_version=0)
    result = store.append(stream, [NewEvent("B", {}), NewEvent("B", {})], expected_version=2)
    assert (result.first_version, result.last_version) == (3, 4)
    before = counts(admin)
    for wrong in (0, 1, 2, 3, 5, 100):
        with pytest.raises(WrongExpectedVersion) as info:
            store.append(stream, [NewEvent("C", {})], expected_version=wrong)
        assert info.value.expected == wrong
        assert info.value.actual == 4
        assert info.value.stream_id == stream
        assert "4" in str(info.value)
    with pytest.raises(WrongExpectedVersion) as info:
        store.append(f"{stream}-new", [NewEvent("C", {})], expected_version=3)
    assert (info.value.expected, info.value.actual) == (3, 0)
    assert counts(admin) == before
    assert store.append(stream, [NewEvent("C", {})], expected_version=4).last_version == 5


def test_wrong_expected_version_carries_the_database_answer(store: EventStore, stream: str) -> None:
    """utcp.append_group() answers a wrong version with a row (outcome 'v'
    and the actual version), not an error: the store's error says so with
    UT001, the code utcp.append_events() raised, and chains nothing."""
    store.append(stream, [NewEvent("A", {})])
    with pytest.raises(WrongExpectedVersion) as info:
        store.append(stream, [NewEvent("A", {})], expected_version=NO_STREAM)
    assert info.value.sqlstate == "UT001"
    assert (info.value.expected, info.value.actual) == (NO_STREAM, 1)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("bad", [-1, -2, True, False, "1", 1.0, None, "ANY"])
def test_invalid_expected_version_is_refused(
    store: EventStore, stream: str, admin: psycopg.Connection[Any], bad: Any
) -> None:
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        store.append(stream, [NewEvent("A", {})], expected_version=bad)
    assert info.value.field == "expected_version"
    assert counts(admin) == before
    assert store.stream_version(stream) == 0


@settings(max_examples=10)
@given(
    batches=st.lists(
        st.tuples(st.integers(min_value=1, max_value=6), st.booleans()), min_size=1, max_size=5
    )
)
def test_stream_versions_are_contiguous(store: EventStore, batches: list[tuple[int, bool]]) -> None:
    stream = f"prop-{uuid.uuid4().hex[:12]}"
    version = 0
    positions: list[int] = []
    for size, exact in batches:
        expected = version if exact else ANY
        result = store.append(
            stream, [NewEvent("Step", {"i": i}) for i in range(size)], expected_version=expected
        )
        assert (result.first_version, result.last_version) == (version + 1, version + size)
        version += size
        positions.extend(result.positions)
    events = store.read_stream(stream)
    assert [e.stream_version for e in events] == list(range(1, version + 1))
    assert [e.position for e in events] == positions
    assert positions == sorted(positions)
    assert store.stream_version(stream) == version
