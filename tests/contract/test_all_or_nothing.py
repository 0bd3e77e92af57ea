"""All or nothing (docs/design.md §2): an append the store refuses — in the
client's validation or in the database — writes nothing, not one event of
its batch, not its idempotency key."""

from __future__ import annotations

import math
import uuid
from typing import Any

import psycopg
import pytest

from eventstore import DuplicateEventId, EventStore, NewEvent, ValidationError
from tests.contract.conftest import Writer
from tests.contract.test_idempotency import key_row, new_key
from tests.support.database import log_counts as counts


def test_duplicate_ids_inside_one_batch_are_refused(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    event_id = uuid.uuid4()
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        writer.append(
            stream,
            [NewEvent("A", {}, event_id=event_id), NewEvent("B", {}, event_id=event_id)],
            idempotency_key=new_key(),
        )
    assert info.value.field == "events[1].event_id"
    assert counts(admin) == before


def test_a_batch_with_one_invalid_event_writes_nothing(
    writer: Writer,
    store: EventStore,
    stream: str,
    admin: psycopg.Connection[Any],
    writer_kind: str,
) -> None:
    writer.append(stream, [NewEvent("Opened", {})])
    key = new_key()
    before = counts(admin)
    batch = [NewEvent("Step", {"n": i}) for i in range(5)]
    # NaN has no JSON form, so an HTTP client cannot send it: over HTTP the
    # invalid value is one JSON can carry and the store refuses (a NUL).
    bad: object = "a\x00b" if writer_kind == "http" else math.nan
    batch.insert(3, NewEvent("Step", {"n": bad}))
    with pytest.raises(ValidationError) as info:
        writer.append(stream, batch, idempotency_key=key)
    assert info.value.field == "events[3].data.n"
    assert counts(admin) == before
    assert key_row(admin, key) is None
    assert store.stream_version(stream) == 1


@pytest.mark.parametrize("with_key", [False, True])
def test_a_batch_failing_in_the_database_writes_nothing(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any], with_key: bool
) -> None:
    taken = uuid.uuid4()
    writer.append(f"{stream}-elsewhere", [NewEvent("A", {}, event_id=taken)])
    writer.append(stream, [NewEvent("Opened", {})])
    key = new_key() if with_key else None
    before = counts(admin)
    batch = [
        NewEvent("Step", {"n": 1}),
        NewEvent("Step", {"n": 2}, event_id=taken),  # already in the log
        NewEvent("Step", {"n": 3}),
    ]
    with pytest.raises(DuplicateEventId):
        writer.append(stream, batch, idempotency_key=key)
    assert counts(admin) == before
    assert store.stream_version(stream) == 1
    if key is not None:
        # the key was not kept: the failed call wrote nothing, not even its key
        assert key_row(admin, key) is None
        fixed = [batch[0], NewEvent("Step", {"n": 2}), batch[2]]
        result = writer.append(stream, fixed, idempotency_key=key)
        assert result.duplicate is False
        assert (result.first_version, result.last_version) == (2, 4)


def test_one_bad_event_anywhere_in_a_batch_writes_nothing(
    writer: Writer, store: EventStore, admin: psycopg.Connection[Any], stream: str
) -> None:
    writer.append(stream, [NewEvent("Step", {"n": 0})])
    batch = [NewEvent("Step", {"n": i}) for i in range(1, 8)]
    batch[6] = NewEvent("Step", {"n": 6, "bad": "\x00"})
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        writer.append(stream, batch, idempotency_key=uuid.uuid4().hex)
    assert info.value.field == "events[6].data.bad"
    assert counts(admin) == before
    assert store.stream_version(stream) == 1
