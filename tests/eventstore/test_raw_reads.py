"""Raw read mode: payloads handed back as their JSON bytes (RawStoredEvent),
and decoding them straight into the registered payload Structs."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal

import msgspec
import pytest

from eventstore import EventStore, NewEvent, RawStoredEvent, StoredEvent, ValidationError
from trading import Trade, trading_registry

REGISTRY = trading_registry()
HORIZON_WAIT = 60.0


def _trade(n: int) -> Trade:
    return Trade(
        trade_id=f"t-{uuid.uuid4().hex}",
        portfolio_id="p-raw",
        symbol="BRK.B",
        side="buy" if n % 2 else "sell",
        quantity=Decimal("0.000000001") * (n + 1),
        price=Decimal("12345.6789012345678901"),
        fees=Decimal("0.10"),
        executed_at=dt.datetime(2024, 1, 2, 15, 30, n, tzinfo=dt.UTC),
        order_id=f"o-{n}",
    )


def _same_envelope(raw: RawStoredEvent, decoded: StoredEvent) -> None:
    for field in RawStoredEvent.__struct_fields__:
        if field not in {"data", "metadata"}:
            assert getattr(raw, field) == getattr(decoded, field), field
    assert msgspec.json.decode(raw.data) == decoded.data
    assert (None if raw.metadata is None else msgspec.json.decode(raw.metadata)) == (
        decoded.metadata
    )


def test_read_stream_raw_hands_back_json_bytes_of_the_same_events(
    store: EventStore, stream: str
) -> None:
    trades = [_trade(n) for n in range(3)]
    store.append(
        stream,
        [NewEvent("TradeExecuted", t, {"actor": "test"}) for t in trades]
        + [NewEvent("Note", {"text": "ünïcode \u2028", "nested": {"a": [1, 2.5, None]}})],
    )
    decoded = store.read_stream(stream)
    raw = store.read_stream(stream, raw=True)
    assert [type(e) for e in raw] == [RawStoredEvent] * 4
    assert all(isinstance(e.data, bytes) for e in raw)
    for r, d in zip(raw, decoded, strict=True):
        _same_envelope(r, d)
    # Straight into the registered Struct, equal to the dict path's result.
    for r, d, trade in zip(raw, decoded, trades, strict=False):
        assert REGISTRY.decode_raw(r) == REGISTRY.decode(d) == trade
    # An unregistered type decodes into a dict.
    assert REGISTRY.decode_raw(raw[3]) == decoded[3].data
    # from_version and limit apply as in the decoded mode.
    assert [
        e.stream_version for e in store.read_stream(stream, from_version=2, limit=1, raw=True)
    ] == [2]


def test_read_all_raw_pages_like_the_decoded_mode(store: EventStore, stream: str) -> None:
    first = store.append(stream, [NewEvent("Note", {"n": 0})])
    store.append(stream, [NewEvent("Note", {"n": n}) for n in range(1, 4)])
    (opened,) = store.read_stream(stream, limit=1)
    assert opened.position == first.positions[0]
    deadline = time.monotonic() + HORIZON_WAIT
    while True:
        decoded = [e for e in store.read_all(after=opened.checkpoint) if e.stream_id == stream]
        if len(decoded) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raw = [e for e in store.read_all(after=opened.checkpoint, raw=True) if e.stream_id == stream]
    assert len(raw) == len(decoded) == 3
    for r, d in zip(raw, decoded, strict=True):
        _same_envelope(r, d)
    typed = store.read_all(after=opened.checkpoint, raw=True, types=["Nothing"])
    assert all(e.type == "Nothing" for e in typed)


def test_raw_reads_check_their_arguments_like_the_decoded_ones(store: EventStore) -> None:
    with pytest.raises(ValidationError):
        store.read_all(after="not-a-checkpoint", raw=True)
    with pytest.raises(ValidationError):
        store.read_stream("", raw=True)


def test_decode_raw_refuses_a_payload_that_does_not_fit_its_struct() -> None:
    now = dt.datetime.now(dt.UTC)
    event = RawStoredEvent(
        position=1,
        checkpoint="1/1",
        event_id=uuid.uuid4(),
        stream_id="portfolio-x",
        stream_version=1,
        type="TradeExecuted",
        data=b'{"trade_id": "t", "side": "hold"}',
        metadata=None,
        symbol=None,
        occurred_at=now,
        created_at=now,
        prev_hash=None,
        hash=b"\x00" * 32,
    )
    with pytest.raises(msgspec.ValidationError):
        REGISTRY.decode_raw(event)
