"""Exactly once (docs/design.md §2, invariant 2): a repeat of a keyed request is
a duplicate that writes nothing, the same key with another request is a
conflict that writes nothing, keys are kept for good with what they wrote,
caller-given event ids are part of the request — and concurrent appends
with one key write once."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    DuplicateEventId,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    WrongExpectedVersion,
)
from tests.contract.conftest import ContractDb, Writer
from tests.support.database import event_rows, key_rows
from tests.support.database import log_counts as counts
from tests.support.threads import run_threads


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
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    first = writer.append(stream, deposit("10"), idempotency_key=key)
    assert first.duplicate is False
    before = counts(admin)
    # a retry builds its events again: new objects, generated ids, other key order
    retry_events = [
        NewEvent("FundsNoted", {"currency": "USD", "amount": "10"}, {"actor": "bot"}),
        NewEvent("NoteTaken", {"text": "deposited 10"}),
    ]
    for _ in range(3):
        again = writer.append(stream, retry_events, idempotency_key=key)
        assert again.duplicate is True
        assert again == msgspec.structs.replace(first, duplicate=True)
    assert counts(admin) == before
    assert store.stream_version(stream) == 2
    assert [e.position for e in store.read_stream(stream)] == list(first.positions)


def test_keys_are_kept_with_what_they_wrote(
    writer: Writer,
    store: EventStore,
    stream: str,
    admin: psycopg.Connection[Any],
    writer_kind: str,
) -> None:
    writer.append(stream, [NewEvent("Opened", {})])
    key = new_key()
    result = writer.append(stream, deposit("5"), idempotency_key=key)
    row = key_row(admin, key)
    assert row is not None
    stream_id, first_version, last_version, first_event_id, fingerprint = row
    assert (stream_id, first_version, last_version) == (stream, 2, 3)
    assert (result.first_version, result.last_version) == (2, 3)
    assert first_event_id == store.read_stream(stream, from_version=2)[0].event_id
    assert isinstance(fingerprint, bytes) and len(fingerprint) == 32
    # no key, no row (over HTTP, store.append derives a key for a keyless
    # call, so that an identical repeat is recorded once: one row)
    before = counts(admin)
    writer.append(stream, [NewEvent("Unkeyed", {})])
    derived = 1 if writer_kind == "http" else 0
    assert counts(admin) == (before[0] + 1, before[1] + derived)


@pytest.mark.parametrize(
    "change",
    ["amount", "extra_field", "type", "metadata", "no_metadata", "fewer_events", "more_events"],
)
def test_same_key_different_request_conflicts_and_writes_nothing(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any], change: str
) -> None:
    key = new_key()
    original = writer.append(stream, deposit("10"), idempotency_key=key)
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
        writer.append(stream, events, idempotency_key=key)
    assert info.value.idempotency_key == key
    assert info.value.stream_id == stream
    assert key in str(info.value)
    assert counts(admin) == before
    # the original stays what it was
    assert writer.append(stream, deposit("10"), idempotency_key=key) == msgspec.structs.replace(
        original, duplicate=True
    )


def test_same_key_on_another_stream_conflicts(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    writer.append(stream, deposit("1"), idempotency_key=key)
    before = counts(admin)
    with pytest.raises(IdempotencyConflict):
        writer.append(f"{stream}-other", deposit("1"), idempotency_key=key)
    assert counts(admin) == before
    assert store.stream_version(f"{stream}-other") == 0


@pytest.mark.parametrize("expected", [0, NO_STREAM, 2, STREAM_EXISTS])
def test_a_retry_is_a_duplicate_even_after_the_stream_moved(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any], expected: Any
) -> None:
    if expected == 2:
        writer.append(stream, [NewEvent("A", {}), NewEvent("A", {})])
    elif expected is STREAM_EXISTS:
        writer.append(stream, [NewEvent("A", {})])
    key = new_key()
    first = writer.append(stream, deposit("7"), expected_version=expected, idempotency_key=key)
    writer.append(stream, [NewEvent("Later", {})])  # the stream moves on
    before = counts(admin)
    again = writer.append(stream, deposit("7"), expected_version=expected, idempotency_key=key)
    assert again == msgspec.structs.replace(first, duplicate=True)
    assert counts(admin) == before
    # without the key, the same request is a version conflict
    if expected is not STREAM_EXISTS:
        with pytest.raises(WrongExpectedVersion):
            writer.append(stream, deposit("7"), expected_version=expected)
    assert counts(admin) == before


def test_caller_event_ids_reused_without_a_key_are_refused(
    writer: Writer,
    store: EventStore,
    stream: str,
    admin: psycopg.Connection[Any],
    writer_kind: str,
) -> None:
    event_id = uuid.uuid4()
    writer.append(stream, [NewEvent("A", {"n": 1}, event_id=event_id)])
    before = counts(admin)
    targets = (stream, f"{stream}-other")
    if writer_kind == "http":
        # store.append derives a key from a keyless request: the identical
        # repeat to the same stream is that request again, a duplicate
        # that writes nothing; the same ids elsewhere are still refused.
        assert writer.append(stream, [NewEvent("A", {"n": 1}, event_id=event_id)]).duplicate
        targets = (f"{stream}-other",)
    for target in targets:
        with pytest.raises(DuplicateEventId) as info:
            writer.append(target, [NewEvent("A", {"n": 1}, event_id=event_id)])
        assert info.value.stream_id == target
        assert info.value.sqlstate == "23505"
    assert counts(admin) == before
    assert store.stream_version(stream) == 1
    assert store.stream_version(f"{stream}-other") == 0


def test_caller_event_ids_are_part_of_the_request(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    key = new_key()
    ids = [uuid.uuid4(), uuid.uuid4()]
    events = [NewEvent("A", {"n": i}, event_id=ids[i]) for i in range(2)]
    first = writer.append(stream, events, idempotency_key=key)
    assert [e.event_id for e in store.read_stream(stream)] == ids
    before = counts(admin)
    assert writer.append(stream, events, idempotency_key=key).duplicate is True
    other_ids = [NewEvent("A", {"n": i}, event_id=uuid.uuid4()) for i in range(2)]
    with pytest.raises(IdempotencyConflict):
        writer.append(stream, other_ids, idempotency_key=key)
    assert counts(admin) == before
    assert writer.append(stream, events, idempotency_key=key).positions == first.positions


def same_key_race(writer: Writer, threads: int, expected: Any) -> tuple[str, str, list[Any]]:
    """``threads`` identical keyed appends, released together by a barrier."""
    stream = f"same-key-{uuid.uuid4().hex[:10]}"
    key = f"order-{uuid.uuid4().hex}"
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def call(t: int) -> None:
        batch = [NewEvent("OrderPlaced", {"qty": 3}), NewEvent("OrderAccepted", {"ok": True})]
        barrier.wait(timeout=60)
        results[t] = writer.append(stream, batch, expected_version=expected, idempotency_key=key)

    run_threads(threads, call)
    return stream, key, results


@pytest.mark.parametrize("expected", [ANY, NO_STREAM], ids=["ANY", "NO_STREAM"])
def test_concurrent_appends_with_one_key_write_once(
    writer: Writer, store: EventStore, contract_db: ContractDb, expected: Any
) -> None:
    threads = 8
    for _ in range(3):
        stream, key, results = same_key_race(writer, threads, expected)
        assert all(isinstance(r, AppendResult) for r in results)
        assert sum(not r.duplicate for r in results) == 1
        first = next(r for r in results if not r.duplicate)
        assert {(r.stream_id, r.first_version, r.last_version, r.positions) for r in results} == {
            (stream, 1, 2, first.positions)
        }
        assert event_rows(contract_db.admin_dsn, stream_ids=[stream]) == 2
        assert key_rows(contract_db.admin_dsn, key) == 1
        assert tuple(e.position for e in store.read_stream(stream)) == first.positions


@pytest.mark.parametrize("same_stream", [True, False], ids=["same-stream", "other-streams"])
def test_concurrent_appends_with_one_key_and_different_requests_conflict(
    writer: Writer, store: EventStore, contract_db: ContractDb, same_stream: bool
) -> None:
    threads = 8
    run = uuid.uuid4().hex[:10]
    key = f"conflict-{run}"
    streams = [f"keyed-{run}" if same_stream else f"keyed-{run}-{t}" for t in range(threads)]
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def call(t: int) -> None:
        barrier.wait(timeout=60)
        try:
            outcomes[t] = writer.append(
                streams[t], [NewEvent("OrderPlaced", {"thread": t})], idempotency_key=key
            )
        except IdempotencyConflict as exc:
            outcomes[t] = exc

    run_threads(threads, call)

    wins = [t for t, o in enumerate(outcomes) if isinstance(o, AppendResult)]
    assert len(wins) == 1, outcomes
    winner = outcomes[wins[0]]
    assert winner.duplicate is False
    assert (winner.first_version, winner.last_version) == (1, 1)
    for t, o in enumerate(outcomes):
        if t != wins[0]:
            assert isinstance(o, IdempotencyConflict), o
            assert o.idempotency_key == key
    assert event_rows(contract_db.admin_dsn, stream_ids=sorted(set(streams))) == 1
    assert key_rows(contract_db.admin_dsn, key) == 1
    stored = store.read_stream(streams[wins[0]])
    assert [e.data["thread"] for e in stored] == [wins[0]]
