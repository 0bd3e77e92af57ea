"""The JSON form of a stored event (eventstore/jsonform.py): one encoding
for `eventstore read|tail --json` and the HTTP service."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from eventstore import StoredEvent, ValidationError
from eventstore.jsonform import encode_event, event_from_json, event_record


def make_event(prev_hash: bytes | None) -> StoredEvent:
    return StoredEvent(
        position=42,
        checkpoint="1234/42",
        event_id=uuid.UUID("01a236fc-3141-72cf-9a44-b1651001eb65"),
        stream_id="portfolio-7",
        stream_version=3,
        type="CashDeposited",
        data={"amount": "100.50", "note": "a\u202eb"},
        metadata={"actor": "test"},
        symbol=None,
        occurred_at=dt.datetime(2026, 12, 2, 13, 40, 27, 88906, tzinfo=dt.UTC),
        created_at=dt.datetime(2026, 12, 2, 13, 40, 28, tzinfo=dt.UTC),
        prev_hash=prev_hash,
        hash=bytes(range(32)),
    )


@pytest.mark.parametrize("prev_hash", [None, b"\xff" * 32])
def test_every_field_by_name_and_back(prev_hash: bytes | None) -> None:
    event = make_event(prev_hash)
    record = event_record(event)
    assert set(record) == set(StoredEvent.__struct_fields__)
    assert record["event_id"] == "01a236fc-3141-72cf-9a44-b1651001eb65"
    assert record["hash"] == bytes(range(32)).hex()
    assert record["prev_hash"] == (None if prev_hash is None else prev_hash.hex())
    assert record["occurred_at"] == "2026-12-02T13:40:27.088906Z"
    assert record["data"] == {"amount": "100.50", "note": "a\u202eb"}
    encoded = encode_event(event)
    assert json.loads(encoded) == record
    assert b"\n" not in encoded
    assert event_from_json(encoded) == event
    assert event_from_json(encoded.decode()) == event
    assert event_from_json(record) == event


@pytest.mark.parametrize("bad", [b"[1]", b"{", b'{"position": "x"}', "null"])
def test_anything_else_is_a_validation_error(bad: bytes | str) -> None:
    with pytest.raises(ValidationError, match="not the JSON form of a stored event"):
        event_from_json(bad)
