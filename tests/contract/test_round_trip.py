"""Append and read back (docs/design.md §2): what a writer appends is what every
read returns, exactly — data, metadata, type, ids, decimals, the indexed
symbol and business time, positions and checkpoints."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from eventstore import NO_STREAM, AppendResult, EventStore, NewEvent, StoredEvent
from tests.contract.conftest import Writer
from tests.support.horizon import wait_for_horizon
from trading import Trade, trading_registry

REGISTRY = trading_registry()


def read_all_from(store: EventStore, after: str | None) -> list[StoredEvent]:
    """Every visible event after checkpoint ``after``, page by page."""
    seen: list[StoredEvent] = []
    while page := store.read_all(after=after, limit=1000):
        seen.extend(page)
        after = page[-1].checkpoint
    return seen


class Note(msgspec.Struct, frozen=True):
    """An unregistered payload Struct with the fields the store indexes."""

    text: str
    symbol: str
    occurred_at: dt.datetime


def test_round_trip_keeps_data_metadata_type_and_ids(
    writer: Writer, store: EventStore, stream: str
) -> None:
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
    result = writer.append(
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
def test_decimals_are_stored_as_exact_strings(
    writer: Writer, store: EventStore, stream: str, text: str
) -> None:
    writer.append(stream, [NewEvent("Priced", {"value": Decimal(text), "list": [Decimal(text)]})])
    (event,) = store.read_stream(stream)
    assert event.data["value"] == str(Decimal(text))
    assert event.data["list"] == [str(Decimal(text))]
    assert Decimal(event.data["value"]) == Decimal(text)
    assert Decimal(event.data["value"]).as_tuple() == Decimal(text).as_tuple()


def test_trade_payload_round_trips_exactly_and_indexes_symbol_and_time(
    writer: Writer, store: EventStore, stream: str
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
    writer.append(stream, [NewEvent("TradeExecuted", trade)])
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


def test_symbol_and_occurred_at_come_from_a_generic_payload(
    writer: Writer, store: EventStore, stream: str
) -> None:
    writer.append(
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


def test_positions_and_checkpoints_match_read_all(
    writer: Writer, store: EventStore, stream: str
) -> None:
    first = writer.append(stream, [NewEvent("Opened", {"n": 0})])
    (opened,) = store.read_stream(stream)
    assert opened.position == first.positions[0]
    batch = writer.append(stream, [NewEvent("Step", {"n": i}) for i in range(1, 6)])
    single = writer.append(stream, [NewEvent("Closed", {"n": 6})])
    written = batch.positions + single.positions

    # Latency, not loss: a transaction elsewhere on the shared server holds
    # readers back until it ends.
    wait_for_horizon(store)
    seen = [e for e in read_all_from(store, opened.checkpoint) if e.stream_id == stream]
    assert tuple(e.position for e in seen) == written
    assert [e.stream_version for e in seen] == list(range(2, 8))
    # read_all returns the very same envelopes as read_stream
    assert seen == store.read_stream(stream, from_version=2)
    # a checkpoint means "everything after this event"
    middle = seen[2]
    rest = [e for e in read_all_from(store, middle.checkpoint) if e.stream_id == stream]
    assert [e.stream_version for e in rest] == [5, 6, 7]
    # the type filter
    closed_only = store.read_all(after=opened.checkpoint, types=["Closed"])
    assert [e.position for e in closed_only if e.stream_id == stream] == list(single.positions)
    assert all(e.type == "Closed" for e in closed_only)
