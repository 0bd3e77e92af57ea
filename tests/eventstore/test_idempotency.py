"""Exactly once (DESIGN.md §2, invariant 2) and all-or-nothing batches.

Idempotent retries, key conflicts, keys kept for good, caller-given event
ids, and batches that fail half-way (in Python or in the database) writing
nothing. Concurrent same-key appends are in test_concurrency.py.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

from eventstore import (
    NO_STREAM,
    STREAM_EXISTS,
    DuplicateEventId,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    ValidationError,
    WrongExpectedVersion,
)


def counts(admin: psycopg.Connection[Any]) -> tuple[int, int]:
    row = admin.execute(
        "SELECT (SELECT count(*) FROM utcp.stored_events),"
        " (SELECT count(*) FROM utcp.idempotency_keys)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def key_row(admin: psycopg.Connection[Any], key: str) -> tuple[Any, ...] | None:
    return admin.execute(
        "SELECT stream_id, first_version, last_version, first_event_id, fingerprint"
        "  FROM utcp.idempotency_keys WHERE key = %s",
        (key,),
    ).fetchone()


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


def deposit(amount: str, **extra: Any) -> list[NewEvent]:
    return [
        NewEvent("FundsNoted", {"amount": amount, "currency": "USD", **extra}, {"actor": "bot"}),
        NewEvent("NoteTaken", {"text": f"deposited {amount}"}),
    ]


def test_same_key_same_request_returns_the_original_result(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    first = store.append(stream, deposit("10"), idempotency_key=key)
    assert first.duplicate is False
    before = counts(admin)
    # a retry builds its events again: new objects, generated ids, other key order
    retry_events = [
        NewEvent("FundsNoted", {"currency": "USD", "amount": "10"}, {"actor": "bot"}),
        NewEvent("NoteTaken", {"text": "deposited 10"}),
    ]
    for _ in range(3):
        again = store.append(stream, retry_events, idempotency_key=key)
        assert again.duplicate is True
        assert again == msgspec.structs.replace(first, duplicate=True)
    assert counts(admin) == before
    assert store.stream_version(stream) == 2
    assert [e.position for e in store.read_stream(stream)] == list(first.positions)


def test_keys_are_kept_with_what_they_wrote(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    store.append(stream, [NewEvent("Opened", {})])
    key = new_key()
    result = store.append(stream, deposit("5"), idempotency_key=key)
    row = key_row(admin, key)
    assert row is not None
    stream_id, first_version, last_version, first_event_id, fingerprint = row
    assert (stream_id, first_version, last_version) == (stream, 2, 3)
    assert (result.first_version, result.last_version) == (2, 3)
    assert first_event_id == store.read_stream(stream, from_version=2)[0].event_id
    assert isinstance(fingerprint, bytes) and len(fingerprint) == 32
    # no key, no row
    before = counts(admin)
    store.append(stream, [NewEvent("Unkeyed", {})])
    assert counts(admin) == (before[0] + 1, before[1])


@pytest.mark.parametrize(
    "change",
    ["amount", "extra_field", "type", "metadata", "no_metadata", "fewer_events", "more_events"],
)
def test_same_key_different_request_conflicts_and_writes_nothing(
    store: EventStore, stream: str, admin: psycopg.Connection[Any], change: str
) -> None:
    key = new_key()
    original = store.append(stream, deposit("10"), idempotency_key=key)
    events = deposit("10")
    if change == "amount":
        events = deposit("10.0")
    elif change == "extra_field":
        events = deposit("10", memo="x")
    elif change == "type":
        events = [NewEvent("FundsReleased", events[0].data, events[0].metadata), events[1]]
    elif change == "metadata":
        events = [NewEvent(events[0].type, events[0].data, {"actor": "human"}), events[1]]
    elif change == "no_metadata":
        events = [NewEvent(events[0].type, events[0].data), events[1]]
    elif change == "fewer_events":
        events = events[:1]
    elif change == "more_events":
        events = [*events, NewEvent("NoteTaken", {"text": "more"})]
    before = counts(admin)
    with pytest.raises(IdempotencyConflict) as info:
        store.append(stream, events, idempotency_key=key)
    assert info.value.idempotency_key == key
    assert info.value.stream_id == stream
    assert key in str(info.value)
    assert counts(admin) == before
    # the original stays what it was
    assert store.append(stream, deposit("10"), idempotency_key=key) == msgspec.structs.replace(
        original, duplicate=True
    )


def test_same_key_on_another_stream_conflicts(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    store.append(stream, deposit("1"), idempotency_key=key)
    before = counts(admin)
    with pytest.raises(IdempotencyConflict):
        store.append(f"{stream}-other", deposit("1"), idempotency_key=key)
    assert counts(admin) == before
    assert store.stream_version(f"{stream}-other") == 0


@pytest.mark.parametrize("expected", [0, NO_STREAM, 2, STREAM_EXISTS])
def test_a_retry_is_a_duplicate_even_after_the_stream_moved(
    store: EventStore, stream: str, admin: psycopg.Connection[Any], expected: Any
) -> None:
    if expected == 2:
        store.append(stream, [NewEvent("A", {}), NewEvent("A", {})])
    elif expected is STREAM_EXISTS:
        store.append(stream, [NewEvent("A", {})])
    key = new_key()
    first = store.append(stream, deposit("7"), expected_version=expected, idempotency_key=key)
    store.append(stream, [NewEvent("Later", {})])  # the stream moves on
    before = counts(admin)
    again = store.append(stream, deposit("7"), expected_version=expected, idempotency_key=key)
    assert again == msgspec.structs.replace(first, duplicate=True)
    assert counts(admin) == before
    # without the key, the same request is a version conflict
    if expected is not STREAM_EXISTS:
        with pytest.raises(WrongExpectedVersion):
            store.append(stream, deposit("7"), expected_version=expected)
    assert counts(admin) == before


def test_caller_event_ids_reused_without_a_key_are_refused(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    event_id = uuid.uuid4()
    store.append(stream, [NewEvent("A", {"n": 1}, event_id=event_id)])
    before = counts(admin)
    for target in (stream, f"{stream}-other"):
        with pytest.raises(DuplicateEventId) as info:
            store.append(target, [NewEvent("A", {"n": 1}, event_id=event_id)])
        assert info.value.stream_id == target
        assert info.value.sqlstate == "23505"
    assert counts(admin) == before
    assert store.stream_version(stream) == 1
    assert store.stream_version(f"{stream}-other") == 0


def test_duplicate_event_id_chains_the_database_error(store: EventStore, stream: str) -> None:
    event_id = uuid.uuid4()
    store.append(stream, [NewEvent("A", {}, event_id=event_id)])
    with pytest.raises(DuplicateEventId) as info:
        store.append(stream, [NewEvent("A", {}, event_id=event_id)])
    assert info.value.__cause__ is not info.value
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)


def test_caller_event_ids_are_part_of_the_request(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    ids = [uuid.uuid4(), uuid.uuid4()]
    events = [NewEvent("A", {"n": i}, event_id=ids[i]) for i in range(2)]
    first = store.append(stream, events, idempotency_key=key)
    assert [e.event_id for e in store.read_stream(stream)] == ids
    before = counts(admin)
    assert store.append(stream, events, idempotency_key=key).duplicate is True
    other_ids = [NewEvent("A", {"n": i}, event_id=uuid.uuid4()) for i in range(2)]
    with pytest.raises(IdempotencyConflict):
        store.append(stream, other_ids, idempotency_key=key)
    assert counts(admin) == before
    assert store.append(stream, events, idempotency_key=key).positions == first.positions


def test_duplicate_ids_inside_one_batch_are_refused(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    event_id = uuid.uuid4()
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        store.append(
            stream,
            [NewEvent("A", {}, event_id=event_id), NewEvent("B", {}, event_id=event_id)],
            idempotency_key=new_key(),
        )
    assert info.value.field == "events[1].event_id"
    assert counts(admin) == before


# -- all or nothing -----------------------------------------------------------


def test_a_batch_with_one_invalid_event_writes_nothing(
    store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    store.append(stream, [NewEvent("Opened", {})])
    key = new_key()
    before = counts(admin)
    batch = [NewEvent("Step", {"n": i}) for i in range(5)]
    batch.insert(3, NewEvent("Step", {"n": math.nan}))
    with pytest.raises(ValidationError) as info:
        store.append(stream, batch, idempotency_key=key)
    assert info.value.field == "events[3].data.n"
    assert counts(admin) == before
    assert key_row(admin, key) is None
    assert store.stream_version(stream) == 1


@pytest.mark.parametrize("with_key", [False, True])
def test_a_batch_failing_in_the_database_writes_nothing(
    store: EventStore, stream: str, admin: psycopg.Connection[Any], with_key: bool
) -> None:
    taken = uuid.uuid4()
    store.append(f"{stream}-elsewhere", [NewEvent("A", {}, event_id=taken)])
    store.append(stream, [NewEvent("Opened", {})])
    key = new_key() if with_key else None
    before = counts(admin)
    batch = [
        NewEvent("Step", {"n": 1}),
        NewEvent("Step", {"n": 2}, event_id=taken),  # already in the log
        NewEvent("Step", {"n": 3}),
    ]
    with pytest.raises(DuplicateEventId):
        store.append(stream, batch, idempotency_key=key)
    assert counts(admin) == before
    assert store.stream_version(stream) == 1
    if key is not None:
        # the key was not kept: the failed call wrote nothing, not even its key
        assert key_row(admin, key) is None
        fixed = [batch[0], NewEvent("Step", {"n": 2}), batch[2]]
        result = store.append(stream, fixed, idempotency_key=key)
        assert result.duplicate is False
        assert (result.first_version, result.last_version) == (2, 4)
