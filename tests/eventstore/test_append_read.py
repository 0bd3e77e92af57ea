"""Reads (``read_stream``, ``read_all``, ``stream_version``) and their
arguments, and the direct writer's errors chaining the database's own.

What every writer must do — round trips, expected versions, idempotency —
is the contract suite's (tests/contract), run against each writer."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from eventstore import (
    NO_STREAM,
    DuplicateEventId,
    EventStore,
    NewEvent,
    ValidationError,
    WrongExpectedVersion,
)


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


def test_duplicate_event_id_chains_the_database_error(store: EventStore, stream: str) -> None:
    event_id = uuid.uuid4()
    store.append(stream, [NewEvent("A", {}, event_id=event_id)])
    with pytest.raises(DuplicateEventId) as info:
        store.append(stream, [NewEvent("A", {}, event_id=event_id)])
    assert info.value.__cause__ is not info.value
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
