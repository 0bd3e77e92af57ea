"""Crashes in the middle of an append, and what the direct writer's retries
do about them (docs/design.md §2, invariants 2 and 8).

Two ways to break an append (both in tests/support/faults.py):

* for real: a test-only trigger makes the insert of an event whose data has
  ``"slow": true`` sleep for a second, and another connection kills the
  backend with ``pg_terminate_backend`` while it sleeps (before the commit);
* by injection: a wrapper around ``psycopg.Connection.execute`` raises a
  transient ``OperationalError`` (no SQLSTATE: what a lost connection looks
  like) before the statement is sent, or after it ran and committed — the
  reply lost on the way back.

Either way the direct writer's call must succeed exactly once (it retries),
and integrity errors must never be retried. What every writer owes a caller
whose connection is killed (success exactly once, or AppendOutcomeUnknown)
is the contract suite's: tests/contract/test_killed_connection.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import stamina
from psycopg.conninfo import conninfo_to_dict

from eventstore import (
    ANY,
    NO_STREAM,
    AppendResult,
    DuplicateEventId,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    Settings,
    StorageUnavailable,
    WrongExpectedVersion,
)
from tests.support.database import (
    as_role,
    deployed_database,
    event_rows,
    key_rows,
    rows_per_event_id,
)
from tests.support.faults import SLOW_TRIGGER, FaultInjector, Killer

APP_NAME = f"utcp-crash-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class CrashDb:
    """The module's database (with the slow-insert trigger), as the
    superuser and as the session's writer role."""

    name: str
    admin_dsn: str
    writer_dsn: str

    def rows_per_id(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        return rows_per_event_id(self.admin_dsn, ids)

    def stream_rows(self, stream: str) -> int:
        return event_rows(self.admin_dsn, stream_ids=[stream])

    def key_rows(self, key: str) -> int:
        return key_rows(self.admin_dsn, key)


@pytest.fixture(scope="module")
def crash_db(writer_dsn: str) -> Iterator[CrashDb]:
    with deployed_database("utcp_crash", setup_sql=SLOW_TRIGGER) as dsn:
        yield CrashDb(str(conninfo_to_dict(dsn)["dbname"]), dsn, as_role(dsn, writer_dsn))


@pytest.fixture(scope="module", params=["direct", "groups"])
def crash_store(request: pytest.FixtureRequest, crash_db: CrashDb) -> Iterator[EventStore]:
    """The store, every append its own call ("direct") or under group
    commit ("groups": alone here, a group of one, whose failure hands the
    append to the direct path's retries)."""
    settings = Settings(
        retry_attempts=5,
        retry_timeout=20.0,
        pool_min_size=1,
        pool_max_size=4,
        application_name=APP_NAME,
        group_commit=request.param == "groups",
    )
    with EventStore.open(crash_db.writer_dsn, settings) as s:
        yield s


@pytest.fixture
def faults() -> FaultInjector:
    return FaultInjector(APP_NAME)


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """No sleeping between injected failures; ``cap=True`` keeps the store's
    own attempt count (stamina's test mode would otherwise replace it)."""
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


def new_stream() -> str:
    return f"crash-{uuid.uuid4().hex[:12]}"


def assert_stored_as(store: EventStore, result: AppendResult, ids: list[uuid.UUID]) -> None:
    """The result describes exactly the stored events with these ids."""
    events = store.read_stream(result.stream_id, from_version=result.first_version)
    events = events[: result.last_version - result.first_version + 1]
    assert [e.event_id for e in events] == ids
    assert tuple(e.position for e in events) == result.positions
    assert [e.stream_version for e in events] == list(
        range(result.first_version, result.last_version + 1)
    )


# -- a backend killed while the append is in flight ---------------------------


@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_backend_killed_mid_append_still_appends_exactly_once(
    crash_store: EventStore,
    crash_db: CrashDb,
    caplog: pytest.LogCaptureFixture,
    with_key: bool,
) -> None:
    stream = new_stream()
    key = f"kill-{uuid.uuid4().hex}" if with_key else None
    ids = [uuid.uuid4() for _ in range(3)]
    batch = [
        NewEvent("OrderPlaced", {"qty": 1}, event_id=ids[0]),
        NewEvent("OrderSlow", {"slow": True}, event_id=ids[1]),
        NewEvent("OrderFilled", {"qty": 1}, event_id=ids[2]),
    ]
    killer = Killer(crash_db.admin_dsn, crash_db.name, APP_NAME)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="eventstore"):
        result = crash_store.append(stream, batch, expected_version=NO_STREAM, idempotency_key=key)
    killer.join(timeout=60)
    assert killer.error is None, killer.error
    assert killer.killed, "the backend was never killed: the test proved nothing"
    assert any("retrying" in r.getMessage() for r in caplog.records), "no retry happened"

    assert result.duplicate is False
    assert (result.stream_id, result.first_version, result.last_version) == (stream, 1, 3)
    assert crash_db.rows_per_id(ids) == dict.fromkeys(ids, 1)
    assert crash_db.stream_rows(stream) == 3
    assert_stored_as(crash_store, result, ids)
    assert crash_store.verify_chain(stream).ok
    if key is not None:
        assert crash_db.key_rows(key) == 1
        again = crash_store.append(stream, batch, expected_version=NO_STREAM, idempotency_key=key)
        assert again == AppendResult(stream, 1, 3, result.positions, duplicate=True)
        assert crash_db.stream_rows(stream) == 3


# -- the reply lost after the commit -----------------------------------------


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
@pytest.mark.parametrize("expected", ["ANY", "exact"])
def test_reply_lost_after_commit_returns_the_write_once(
    crash_store: EventStore,
    crash_db: CrashDb,
    faults: FaultInjector,
    with_key: bool,
    expected: str,
) -> None:
    stream = new_stream()
    crash_store.append(stream, [NewEvent("Opened", {"n": 0})])
    key = f"lost-{uuid.uuid4().hex}" if with_key else None
    ids = [uuid.uuid4(), uuid.uuid4()]
    batch = [NewEvent("Tick", {"n": i}, event_id=ids[i]) for i in range(2)]
    expected_version: Any = ANY if expected == "ANY" else 1

    with faults.active("after"):
        result = crash_store.append(
            stream, batch, expected_version=expected_version, idempotency_key=key
        )

    assert faults.calls[0] == ("append", "after")
    # Without a key the retry finds its events by id and sends no append;
    # with one, its append finds the key holding its own request id and
    # writes nothing (the row counts below prove a single write).
    expected_appends = 1 if key is None else 2
    assert faults.count("append") == expected_appends, faults.calls
    assert result.duplicate is False
    assert (result.first_version, result.last_version) == (2, 3)
    assert crash_db.rows_per_id(ids) == dict.fromkeys(ids, 1)
    assert crash_db.stream_rows(stream) == 3
    assert_stored_as(crash_store, result, ids)
    if key is not None:
        assert crash_db.key_rows(key) == 1


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_generated_ids_make_a_lost_reply_safe(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector, with_key: bool
) -> None:
    """Without caller ids: the ids generated before the first attempt are
    what the retry finds."""
    stream = new_stream()
    key = f"gen-{uuid.uuid4().hex}" if with_key else None
    with faults.active("after", "before", "after"):
        result = crash_store.append(
            stream,
            [NewEvent("Tick", {"n": 1}), NewEvent("Tick", {"n": 2})],
            expected_version=NO_STREAM,
            idempotency_key=key,
        )
    # No key: append (after: committed) → lookup (before) → lookup (after) →
    # lookup: found. With a key every retry is an append that finds the key
    # holding its own request id; the row counts prove one write either way.
    assert faults.fired() == 3
    if key is None:
        assert faults.count("append") == 1
    assert result.duplicate is False
    assert (result.first_version, result.last_version) == (1, 2)
    assert crash_db.stream_rows(stream) == 2
    assert [e.data["n"] for e in crash_store.read_stream(stream)] == [1, 2]
    if key is not None:
        assert crash_db.key_rows(key) == 1


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_failure_before_sending_is_retried_and_writes_once(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector, with_key: bool
) -> None:
    stream = new_stream()
    key = f"before-{uuid.uuid4().hex}" if with_key else None
    ids = [uuid.uuid4()]
    with faults.active("before"):
        result = crash_store.append(
            stream,
            [NewEvent("Tick", {"n": 1}, event_id=ids[0])],
            expected_version=0,
            idempotency_key=key,
        )
    assert faults.count("append") == 2
    assert result.duplicate is False
    assert crash_db.rows_per_id(ids) == {ids[0]: 1}
    assert_stored_as(crash_store, result, ids)


@pytest.mark.usefixtures("no_backoff")
def test_transient_failures_that_outlive_the_retries_are_storage_unavailable(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    stream = new_stream()
    with faults.active(*["before"] * 20), pytest.raises(StorageUnavailable) as info:
        crash_store.append(stream, [NewEvent("Tick", {"n": 1})], idempotency_key="k-" + stream)
    assert faults.fired() == crash_store.settings.retry_attempts
    err = info.value
    assert err.operation == "append"
    assert err.stream_id == stream
    assert err.idempotency_key == "k-" + stream
    assert isinstance(err.__cause__, psycopg.OperationalError)
    assert crash_db.stream_rows(stream) == 0
    assert crash_db.key_rows("k-" + stream) == 0


# -- integrity errors are never retried --------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_wrong_expected_version_is_not_retried(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    stream = new_stream()
    crash_store.append(stream, [NewEvent("Tick", {"n": 1})])
    for expected in (0, 5, NO_STREAM):
        with faults.active(), pytest.raises(WrongExpectedVersion) as info:
            crash_store.append(stream, [NewEvent("Tick", {"n": 2})], expected_version=expected)
        assert faults.calls == [("append", "ok")]
        assert info.value.actual == 1
    assert crash_db.stream_rows(stream) == 1


@pytest.mark.usefixtures("no_backoff")
def test_wrong_expected_version_after_a_transient_failure_stops_the_retries(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    stream = new_stream()
    crash_store.append(stream, [NewEvent("Tick", {"n": 1})])
    with faults.active("before"), pytest.raises(WrongExpectedVersion):
        crash_store.append(stream, [NewEvent("Tick", {"n": 2})], expected_version=0)
    assert faults.count("append") == 2
    assert crash_db.stream_rows(stream) == 1


@pytest.mark.usefixtures("no_backoff")
def test_idempotency_conflict_is_not_retried(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    stream = new_stream()
    key = f"conflict-{uuid.uuid4().hex}"
    crash_store.append(stream, [NewEvent("Tick", {"n": 1})], idempotency_key=key)
    with faults.active(), pytest.raises(IdempotencyConflict):
        crash_store.append(stream, [NewEvent("Tick", {"n": 2})], idempotency_key=key)
    assert faults.calls == [("append", "ok")]
    assert crash_db.stream_rows(stream) == 1


@pytest.mark.usefixtures("no_backoff")
def test_duplicate_event_id_is_not_retried(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    stream = new_stream()
    event_id = uuid.uuid4()
    crash_store.append(stream, [NewEvent("Tick", {"n": 1}, event_id=event_id)])
    with faults.active(), pytest.raises(DuplicateEventId):
        crash_store.append(new_stream(), [NewEvent("Tick", {"n": 2}, event_id=event_id)])
    assert faults.calls == [("append", "ok")]
    assert crash_db.rows_per_id([event_id]) == {event_id: 1}


# -- a retry must not mistake an earlier call's write for its own -------------


@pytest.mark.usefixtures("no_backoff")
def test_a_retried_repeat_with_the_same_key_is_still_a_duplicate(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    """Caller-given event ids and a key: the second call is a repeat of the
    first. It must say duplicate=True whether or not its own first attempt
    hit a transient failure (issue 2: duplicate is true when an earlier call
    with the same key already wrote)."""
    stream = new_stream()
    key = f"repeat-{uuid.uuid4().hex}"
    ids = [uuid.uuid4()]
    batch = [NewEvent("Tick", {"n": 1}, event_id=ids[0])]
    first = crash_store.append(stream, batch, idempotency_key=key)
    assert first.duplicate is False

    plain_repeat = crash_store.append(stream, batch, idempotency_key=key)
    assert plain_repeat.duplicate is True

    with faults.active("before"):
        retried_repeat = crash_store.append(stream, batch, idempotency_key=key)
    assert faults.fired() == 1
    assert retried_repeat == plain_repeat
    assert crash_db.rows_per_id(ids) == {ids[0]: 1}


@pytest.mark.usefixtures("no_backoff")
def test_a_retry_does_not_turn_a_key_conflict_into_a_success(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    """Same key and same caller-given event id, different payload: without a
    transient failure this is IdempotencyConflict; a transient failure on the
    first attempt must not make the retry report the earlier call's events
    as this call's write (the new payload was never stored)."""
    stream = new_stream()
    key = f"conflict-retry-{uuid.uuid4().hex}"
    event_id = uuid.uuid4()
    crash_store.append(
        stream, [NewEvent("Tick", {"amount": 1}, event_id=event_id)], idempotency_key=key
    )
    changed = [NewEvent("Tick", {"amount": 1000}, event_id=event_id)]
    with pytest.raises(IdempotencyConflict):
        crash_store.append(stream, changed, idempotency_key=key)

    with faults.active("before"), pytest.raises(IdempotencyConflict):
        crash_store.append(stream, changed, idempotency_key=key)
    assert [e.data for e in crash_store.read_stream(stream)] == [{"amount": 1}]


@pytest.mark.usefixtures("no_backoff")
def test_a_retry_does_not_turn_a_duplicate_event_id_into_a_success(
    crash_store: EventStore, crash_db: CrashDb, faults: FaultInjector
) -> None:
    """No key, a caller-given event id already in the stream, a different
    payload: DuplicateEventId, with or without a transient failure first."""
    stream = new_stream()
    event_id = uuid.uuid4()
    crash_store.append(stream, [NewEvent("Tick", {"amount": 1}, event_id=event_id)])
    changed = [NewEvent("Tick", {"amount": 1000}, event_id=event_id)]
    with pytest.raises(DuplicateEventId):
        crash_store.append(stream, changed)

    with faults.active("before"), pytest.raises(DuplicateEventId):
        crash_store.append(stream, changed)
    assert [e.data for e in crash_store.read_stream(stream)] == [{"amount": 1}]
