"""Group commit against PostgreSQL (eventstore/group_commit.py with
utcp.append_group()): concurrent appends share a transaction, each caller
keeps its own outcome, and a group that fails as a whole leaves each caller
written exactly once or told honestly that it may have been.

Which appends share a group is decided by the tests, not by timing: an
event whose data carries ``"gate": n`` makes its insert wait for advisory
lock n (a test-only trigger), which the test holds. While a group waits at
its gate, the calls the test starts queue up behind it (the committer's
``waiting`` count says when), and go as one group when the gate opens.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventstore import (
    ANY,
    NO_STREAM,
    AppendOutcomeUnknown,
    AppendResult,
    DuplicateEventId,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    Settings,
    ValidationError,
    WrongExpectedVersion,
    limits,
)
from eventstore.events import ExpectedVersion
from eventstore.group_commit import GroupCommitter
from eventstore.writing import GROUP_MAX_REQUEST_EVENTS, GROUPS_IN_FLIGHT
from tests.support.database import admin_dsn, dsn_for, run_cli

GATE_TRIGGER = """
CREATE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared((NEW.data ->> 'gate')::bigint);
    RETURN NEW;
END $$;
CREATE TRIGGER test_gate BEFORE INSERT ON utcp.stored_events
    FOR EACH ROW WHEN (NEW.data ? 'gate')
    EXECUTE FUNCTION public.test_gate();
"""

#: A bound on every wait of these tests (seconds); none is reached when
#: the store works.
BOUND = 60.0
APP_NAME = f"utcp-group-{uuid.uuid4().hex[:8]}"


class GroupDb:
    def __init__(self, name: str, admin: str, writer: str) -> None:
        self.name = name
        self.admin_dsn = admin
        self.writer_dsn = writer

    def query(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def rows_per_id(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        rows = self.query(
            "SELECT event_id, count(*) FROM utcp.stored_events WHERE event_id = ANY(%s) "
            "GROUP BY event_id",
            (list(ids),),
        )
        return {r[0]: int(r[1]) for r in rows}

    def tx_ids(self, ids: Sequence[uuid.UUID]) -> set[str]:
        rows = self.query(
            "SELECT DISTINCT tx_id::text FROM utcp.stored_events WHERE event_id = ANY(%s)",
            (list(ids),),
        )
        return {r[0] for r in rows}

    def waiting_at_gate(self) -> list[int]:
        """Our store's backends waiting for a gate (an advisory lock)."""
        rows = self.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            (self.name, APP_NAME),
        )
        return [int(r[0]) for r in rows]


@pytest.fixture(scope="module")
def group_db(writer_dsn: str) -> Iterator[GroupDb]:
    name = f"utcp_group_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = dsn_for(name)
    run_cli("db", "deploy", "--dsn", admin)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(GATE_TRIGGER)
        role = conninfo_to_dict(writer_dsn)["user"]
        yield GroupDb(name, admin, dsn_for(name, user=role))
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def group_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pool_min_size": 1,
        "pool_max_size": 12,
        "retry_timeout": 30.0,
        "application_name": APP_NAME,
        "group_commit": True,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def store(group_db: GroupDb) -> Iterator[EventStore]:
    with EventStore.open(group_db.writer_dsn, group_settings()) as s:
        yield s


def committer(store: EventStore) -> GroupCommitter[Any, Any]:
    groups = store._writer.groups
    assert groups is not None, "group commit is off"
    return groups


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def new_stream(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_gate() -> int:
    return uuid.uuid4().int % 2**62


@dataclass
class Call:
    """One append a test makes, and what it got."""

    stream: str
    events: list[NewEvent]
    expected: ExpectedVersion = ANY
    key: str | None = None
    result: AppendResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def ids(self) -> list[uuid.UUID]:
        return [e.event_id for e in self.events if e.event_id is not None]

    def run(self, store: EventStore) -> None:
        try:
            self.result = store.append(
                self.stream, self.events, expected_version=self.expected, idempotency_key=self.key
            )
        except BaseException as exc:  # checked by the test
            self.error = exc

    def start(self, store: EventStore) -> None:
        self.thread = threading.Thread(target=self.run, args=(store,), daemon=True)
        self.thread.start()

    def done(self) -> Call:
        assert self.thread is not None
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), f"the append to {self.stream} hung"
        return self


def call(
    stream: str,
    count: int = 1,
    *,
    expected: ExpectedVersion = ANY,
    key: str | None = None,
    gate: int | None = None,
    **data: Any,
) -> Call:
    """An append of ``count`` events with ids chosen here (the first one
    waits at ``gate``, if given)."""
    events = []
    for i in range(count):
        payload: dict[str, Any] = {"n": i, **data}
        if gate is not None and i == 0:
            payload["gate"] = gate
        events.append(NewEvent("Tick", payload, event_id=uuid.uuid4()))
    return Call(stream, events, expected, key)


@contextmanager
def gate_held(group_db: GroupDb, gate: int) -> Iterator[Callable[[], None]]:
    """Hold advisory lock ``gate``; yields a function that opens it (it is
    opened on exit at the latest)."""
    with psycopg.connect(group_db.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (gate,))
        opened = False

        def open_gate() -> None:
            nonlocal opened
            if not opened:
                conn.execute("SELECT pg_advisory_unlock(%s)", (gate,))
                opened = True

        try:
            yield open_gate
        finally:
            open_gate()


@contextmanager
def group_in_flight(store: EventStore, group_db: GroupDb) -> Iterator[list[Call]]:
    """As many groups as may be in flight (GROUPS_IN_FLIGHT), each of one
    append waiting at a gate of its own, for the body: appends started in
    the body queue behind them. On exit the first gate opens: that group
    ends and its leader hands over to the first queued caller, which takes
    the whole queue as the next group; then the other gates open."""
    gates = [new_gate() for _ in range(GROUPS_IN_FLIGHT)]
    with ExitStack() as stack:
        openers = [stack.enter_context(gate_held(group_db, g)) for g in gates]
        leaders = [call(new_stream("leader"), gate=g) for g in gates]
        for leader in leaders:
            leader.start(store)
        until(
            lambda: len(group_db.waiting_at_gate()) == GROUPS_IN_FLIGHT,
            "the leaders' groups wait at their gates",
        )
        yield leaders
        openers[0]()
        leaders[0].done()
        until(lambda: committer(store).waiting == 0, "the queue went as the next group")
        for open_gate in openers[1:]:
            open_gate()
    for leader in leaders:
        leader.done()
        assert leader.error is None, leader.error


def queue(store: EventStore, calls: Sequence[Call]) -> None:
    """Start ``calls`` one by one, each queued before the next starts: the
    next group holds them in this order."""
    groups = committer(store)
    for c in calls:
        before = groups.waiting
        c.start(store)
        until(lambda before=before: groups.waiting == before + 1, "the append is queued")  # type: ignore[misc]


def as_one_group(store: EventStore, group_db: GroupDb, calls: Sequence[Call]) -> list[Call]:
    """Send ``calls`` as one group, in this order; wait for every caller."""
    groups = committer(store)
    with group_in_flight(store, group_db):
        queue(store, calls)
        sent = groups.groups
    for c in calls:
        c.done()
    assert groups.groups == sent + 1, "the calls did not go as one group"
    return list(calls)


def assert_stored_as(store: EventStore, c: Call) -> None:
    """The call's result describes exactly its events as stored."""
    assert c.error is None, c.error
    result = c.result
    assert result is not None and result.duplicate is False
    events = store.read_stream(c.stream, from_version=result.first_version)
    events = events[: result.last_version - result.first_version + 1]
    assert [e.event_id for e in events] == c.ids
    assert [e.data for e in events] == [dict(e.data) for e in c.events]
    assert tuple(e.position for e in events) == result.positions
    assert [e.stream_version for e in events] == list(
        range(result.first_version, result.last_version + 1)
    )


# -- sharing ------------------------------------------------------------------


def test_appends_arriving_during_a_group_share_one_transaction(
    store: EventStore, group_db: GroupDb
) -> None:
    calls = [
        call(new_stream()),
        call(new_stream(), 3),
        call(new_stream(), expected=NO_STREAM),
        call(new_stream(), key=f"k-{uuid.uuid4().hex}"),
        call(new_stream(), 2, key=f"k-{uuid.uuid4().hex}", expected=NO_STREAM),
        call(new_stream()),
    ]
    as_one_group(store, group_db, calls)
    for c in calls:
        assert_stored_as(store, c)
    all_ids = [i for c in calls for i in c.ids]
    assert len(group_db.tx_ids(all_ids)) == 1, "the group's events are not one transaction"
    assert group_db.rows_per_id(all_ids) == dict.fromkeys(all_ids, 1)
    for c in calls:
        assert store.verify_chain(c.stream).ok


def test_stream_ids_and_keys_travel_exactly(store: EventStore, group_db: GroupDb) -> None:
    """The group's arrays go as array literals: quotes, backslashes, braces,
    commas, spaces and the word NULL arrive as written."""
    run = uuid.uuid4().hex[:8]
    odd = ['a"b', "c\\d", "{e,f}", " g ", "NULL", "ünï'", 'h\\"i']
    calls = [
        call(f"{text}-{run}", key=f"{text}-key-{run}" if i % 2 else None)
        for i, text in enumerate(odd)
    ]
    as_one_group(store, group_db, calls)
    for c in calls:
        assert_stored_as(store, c)
        assert c.result is not None and c.result.stream_id == c.stream
    again = calls[1]
    repeat = store.append(again.stream, again.events, idempotency_key=again.key)
    assert repeat.duplicate is True and repeat.positions == again.result.positions  # type: ignore[union-attr]


def test_many_threads_take_fewer_transactions_than_calls(
    store: EventStore, group_db: GroupDb
) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    calls = [[call(new_stream("many")) for _ in range(per_thread)] for _ in range(threads)]

    def worker(t: int) -> None:
        barrier.wait(BOUND)
        for c in calls[t]:
            c.run(store)

    workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(BOUND)
        assert not w.is_alive()
    flat = [c for row in calls for c in row]
    for c in flat:
        assert_stored_as(store, c)
    all_ids = [i for c in flat for i in c.ids]
    transactions = group_db.tx_ids(all_ids)
    assert len(transactions) < len(flat), "no two of 200 concurrent appends shared a group"
    assert group_db.rows_per_id(all_ids) == dict.fromkeys(all_ids, 1)


def test_a_large_append_goes_alone_without_waiting(store: EventStore, group_db: GroupDb) -> None:
    """More than GROUP_MAX_REQUEST_EVENTS events: never queued behind a
    group (it completes while every group slot is held at a gate)."""
    large = call(new_stream("large"), GROUP_MAX_REQUEST_EVENTS + 1)
    with group_in_flight(store, group_db):
        large.start(store)
        large.done()
        assert committer(store).waiting == 0
    assert_stored_as(store, large)


# -- each caller's own outcome -----------------------------------------------


def outcome(c: Call) -> tuple[Any, ...]:
    """What a call got, without what differs between runs (ids, positions)."""
    if c.error is not None:
        err = c.error
        return (
            type(err).__name__,
            getattr(err, "field", None),
            getattr(err, "actual", None),
            getattr(err, "sqlstate", None),
        )
    assert c.result is not None
    return ("ok", c.result.first_version, c.result.last_version, c.result.duplicate)


def mixed_calls(store: EventStore, group_db: GroupDb) -> list[Call]:
    """Good appends among refused ones, each refusal of another kind (set
    up beforehand, outside the group)."""
    shared = new_stream("shared")
    used_key = f"used-{uuid.uuid4().hex}"
    store.append(new_stream(), [NewEvent("Tick", {"n": 0})], idempotency_key=used_key)
    stored_id = uuid.uuid4()
    store.append(new_stream(), [NewEvent("Tick", {"n": 0}, event_id=stored_id)])
    # Only the database sees this one: 1 MiB compact, larger as stored jsonb.
    too_big = {f"k{i:06d}": 1 for i in range(limits.MAX_EVENT_BYTES // 12)}
    return [
        call(shared, expected=NO_STREAM),  # written: v1
        call(shared, expected=NO_STREAM),  # wrong version: the stream is at 1
        call(new_stream(), key=used_key),  # the key was used for another request
        Call(new_stream(), [NewEvent("Big", too_big, event_id=uuid.uuid4())]),  # refused
        Call(new_stream(), [NewEvent("Tick", {"n": 1}, event_id=stored_id)]),  # id stored
        call(f"projection-{uuid.uuid4().hex[:8]}"),  # operators only
        call(shared, 2, expected=1),  # written: v2..v3, after the first
        call(new_stream(), key=f"fresh-{uuid.uuid4().hex}"),  # written
    ]


def test_a_refused_request_leaves_the_others_as_if_alone(
    store: EventStore, group_db: GroupDb
) -> None:
    grouped = as_one_group(store, group_db, mixed_calls(store, group_db))
    with EventStore.open(group_db.writer_dsn, group_settings(group_commit=False)) as alone:
        one_by_one = mixed_calls(alone, group_db)
        for c in one_by_one:
            c.run(alone)

    assert [outcome(c) for c in grouped] == [outcome(c) for c in one_by_one]
    assert [outcome(c) for c in grouped] == [
        ("ok", 1, 1, False),
        ("WrongExpectedVersion", None, 1, "UT001"),
        ("IdempotencyConflict", None, None, "UT005"),
        ("ValidationError", "events[0].data", None, "UT004"),
        ("DuplicateEventId", None, None, "23505"),
        ("StorageError", None, None, "42501"),
        ("ok", 2, 3, False),
        ("ok", 1, 1, False),
    ]
    written = [grouped[i] for i in (0, 6, 7)]
    for c in written:
        assert_stored_as(store, c)
    assert len(group_db.tx_ids([i for c in written for i in c.ids])) == 1
    assert store.verify_chain(grouped[0].stream).ok
    # Each error names its own call.
    for c in grouped[1:6]:
        assert c.error is not None and c.error.stream_id == c.stream  # type: ignore[attr-defined]
    refused_ids = [i for c in grouped[1:6] for i in c.ids]
    stored_before = grouped[4].ids
    assert group_db.rows_per_id(refused_ids) == dict.fromkeys(stored_before, 1)


def test_expected_versions_on_one_stream_in_one_group(store: EventStore, group_db: GroupDb) -> None:
    stream = new_stream("hot")
    expectations: list[ExpectedVersion] = [0, 0, 1, 1, 2, 9, ANY]
    calls = as_one_group(store, group_db, [call(stream, expected=e) for e in expectations])
    assert [outcome(c) for c in calls] == [
        ("ok", 1, 1, False),
        ("WrongExpectedVersion", None, 1, "UT001"),
        ("ok", 2, 2, False),
        ("WrongExpectedVersion", None, 2, "UT001"),
        ("ok", 3, 3, False),
        ("WrongExpectedVersion", None, 3, "UT001"),
        ("ok", 4, 4, False),
    ]
    events = store.read_stream(stream)
    assert [e.stream_version for e in events] == [1, 2, 3, 4]
    assert [e.event_id for e in events] == [calls[i].ids[0] for i in (0, 2, 4, 6)]
    assert store.verify_chain(stream).ok


def test_the_same_key_in_one_group_writes_once(store: EventStore, group_db: GroupDb) -> None:
    stream = new_stream("keyed")
    key = f"same-{uuid.uuid4().hex}"
    same = [
        Call(stream, [NewEvent("OrderPlaced", {"qty": 3}), NewEvent("Accepted", {})], key=key)
        for _ in range(4)
    ]
    other = Call(stream, [NewEvent("OrderPlaced", {"qty": 4})], key=key)
    calls = as_one_group(store, group_db, [*same[:2], other, *same[2:]])
    results = [c.result for c in same]
    assert all(r is not None for r in results)
    first = results[0]
    assert first is not None and first.duplicate is False
    assert (first.first_version, first.last_version) == (1, 2)
    for r in results[1:]:
        assert r == AppendResult(stream, 1, 2, first.positions, duplicate=True)
    assert isinstance(calls[2].error, IdempotencyConflict)
    assert len(store.read_stream(stream)) == 2


# -- a group that fails as a whole -------------------------------------------


def some_calls(prefix: str) -> list[Call]:
    """Appends with and without keys, with generated and chosen ids."""
    return [
        call(new_stream(prefix)),
        call(new_stream(prefix), 2, key=f"{prefix}-{uuid.uuid4().hex}"),
        Call(new_stream(prefix), [NewEvent("Tick", {"generated": True})]),
        call(new_stream(prefix), expected=NO_STREAM),
        Call(new_stream(prefix), [NewEvent("Tick", {"n": 1})], key=f"{prefix}-{uuid.uuid4().hex}"),
    ]


def assert_each_written_once(store: EventStore, group_db: GroupDb, calls: Sequence[Call]) -> None:
    for c in calls:
        assert c.error is None, c.error
        assert c.result is not None and c.result.duplicate is False
        events = store.read_stream(c.stream)
        assert len(events) == len(c.events), f"{c.stream}: {len(events)} events stored"
        assert [e.data for e in events] == [dict(e.data) for e in c.events]
        if c.ids:
            assert [e.event_id for e in events] == c.ids
        assert tuple(e.position for e in events) == c.result.positions
        assert store.verify_chain(c.stream).ok


@pytest.mark.parametrize("killed", ["leader's", "follower's"])
def test_a_backend_killed_mid_group_writes_each_append_once(
    store: EventStore, group_db: GroupDb, caplog: pytest.LogCaptureFixture, killed: str
) -> None:
    """The group's backend is terminated while it waits inside the group's
    transaction: nothing of the group committed, every caller retries alone
    (by the direct path's rules) and is written exactly once."""
    gate = new_gate()
    calls = some_calls("killed")
    gated = call(new_stream("killed"), gate=gate)
    calls.insert(0 if killed == "leader's" else 3, gated)
    with gate_held(group_db, gate) as open_gate:
        with group_in_flight(store, group_db):
            queue(store, calls)
        # The group of `calls` now waits at `gate`, the first groups done.
        until(lambda: bool(group_db.waiting_at_gate()), "the group waits at its gate")
        (pid,) = group_db.waiting_at_gate()
        assert group_db.query("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        open_gate()
        for c in calls:
            c.done()
    assert any("retrying alone" in r.getMessage() for r in caplog.records), "no retry happened"
    assert_each_written_once(store, group_db, calls)


class LostReply:
    """The reply to the first utcp.append_group() call of more than one
    request is lost after the group committed: the statement runs, then
    the connection "breaks" (an OperationalError without SQLSTATE, the
    connection closed as a lost one would be)."""

    def __init__(self) -> None:
        self.fired = 0

    @contextmanager
    def active(self) -> Iterator[LostReply]:
        real = psycopg.Connection.execute
        injector = self

        def execute(
            conn: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any
        ) -> Any:
            cur = real(conn, query, params, **kw)
            if (
                injector.fired == 0
                and conn.info.parameter_status("application_name") == APP_NAME
                and "utcp.append_group(" in str(query)
                and params[3].count(",") > 0  # request ids: "{id,id,...}"
            ):
                injector.fired += 1
                conn.close()
                raise psycopg.OperationalError("injected: connection lost before the reply")
            return cur

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(psycopg.Connection, "execute", execute)
            yield self


def test_a_reply_lost_after_the_group_committed_returns_each_write_once(
    store: EventStore, group_db: GroupDb
) -> None:
    """The group committed, its reply lost: each caller finds its own write
    (by its event ids, or by its key and request id) and reports it once,
    with duplicate=False; nothing is written twice."""
    calls = some_calls("lost")
    with LostReply().active() as lost:
        as_one_group(store, group_db, calls)
    assert lost.fired == 1
    assert_each_written_once(store, group_db, calls)
    ids = [i for c in calls for i in c.ids]
    assert len(group_db.tx_ids(ids)) == 1  # the group's own commit, nothing after it


def test_with_no_retry_left_a_lost_reply_is_outcome_unknown(group_db: GroupDb) -> None:
    """retry_attempts=1: nobody may look again, so each caller of the
    group is told the truth, AppendOutcomeUnknown (with its event ids), and
    a repeat with its key is safe."""
    settings = group_settings(retry_attempts=1)
    with EventStore.open(group_db.writer_dsn, settings) as lone:
        calls = some_calls("unknown")
        with LostReply().active() as lost:
            as_one_group(lone, group_db, calls)
        assert lost.fired == 1
        for c in calls:
            assert isinstance(c.error, AppendOutcomeUnknown), c.error
            assert c.error.stream_id == c.stream
            if c.ids:
                assert list(c.error.event_ids) == c.ids
        # It was written, once: a repeat with the key says so.
        ids = [i for c in calls for i in c.ids]
        assert group_db.rows_per_id(ids) == dict.fromkeys(ids, 1)
        keyed = calls[1]
        again = lone.append(keyed.stream, keyed.events, idempotency_key=keyed.key)
        assert again.duplicate is True
        assert len(lone.read_stream(keyed.stream)) == 2


def test_a_concurrent_writer_of_an_event_id_fails_the_group_and_each_goes_alone(
    store: EventStore, group_db: GroupDb, caplog: pytest.LogCaptureFixture
) -> None:
    """What no check foresees: another transaction writes one of the
    group's event ids after the group looked. The group fails as a whole
    (23505), and each of its requests is sent again alone: that one is a
    DuplicateEventId, the others are written."""
    contested = uuid.uuid4()
    calls = some_calls("contested")
    victim = Call(new_stream("contested"), [NewEvent("Tick", {"n": 1}, event_id=contested)])
    calls.insert(2, victim)
    with psycopg.connect(group_db.admin_dsn) as other:  # a transaction, left open
        other.execute(
            "SELECT utcp.append_events(%s, NULL, NULL, gen_random_uuid(), %s::jsonb)",
            (
                new_stream("other"),
                f'[{{"id": "{contested}", "type": "Tick", "data": {{"other": true}}}}]',
            ),
        )
        with group_in_flight(store, group_db):
            queue(store, calls)
        # The group holding the contested id now waits for the other
        # transaction, at the insert (its look-up could not see the id).
        until(
            lambda: bool(
                group_db.query(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = %s AND wait_event = 'transactionid'",
                    (group_db.name, APP_NAME),
                )
            ),
            "the group waits for the other transaction",
        )
        other.commit()
    for c in calls:
        c.done()
    assert isinstance(victim.error, DuplicateEventId), victim.error
    assert any("sending it alone" in r.getMessage() for r in caplog.records)
    assert_each_written_once(store, group_db, [c for c in calls if c is not victim])
    assert group_db.rows_per_id([contested]) == {contested: 1}


# -- settings and schemas ----------------------------------------------------


def test_the_setting_and_its_environment_variable() -> None:
    assert Settings().group_commit is True
    assert Settings.from_env({"EVENTSTORE_GROUP_COMMIT": "false"}).group_commit is False
    assert Settings.from_env({"EVENTSTORE_GROUP_COMMIT": "0"}).group_commit is False
    assert Settings.from_env({"EVENTSTORE_GROUP_COMMIT": "true"}).group_commit is True
    with pytest.raises(ValidationError) as info:
        Settings.from_env({"EVENTSTORE_GROUP_COMMIT": "sometimes"})
    assert info.value.field == "group_commit"


def test_group_commit_off_sends_each_append_alone(group_db: GroupDb) -> None:
    with EventStore.open(group_db.writer_dsn, group_settings(group_commit=False)) as alone:
        assert alone._writer.groups is None
        stream = new_stream("alone")
        result = alone.append(stream, [NewEvent("Tick", {"n": 1})], expected_version=NO_STREAM)
        assert (result.first_version, result.last_version) == (1, 1)
        with pytest.raises(WrongExpectedVersion):
            alone.append(stream, [NewEvent("Tick", {"n": 2})], expected_version=NO_STREAM)


def test_a_schema_without_append_group_appends_through_append_events(writer_dsn: str) -> None:
    """The Python works with a schema deployed before utcp.append_group():
    no groups, every append its own utcp.append_events() call, with the
    same outcomes."""
    name = f"utcp_nogroup_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = dsn_for(name)
    run_cli("db", "deploy", "--dsn", admin)
    try:
        run_cli("db", "revert", "--dsn", admin, "--to", "projection_guarded", "--yes")
        role = conninfo_to_dict(writer_dsn)["user"]
        with EventStore.open(dsn_for(name, user=role), group_settings()) as old:
            assert old._writer.groups is None
            stream = new_stream("old")
            key = f"old-{uuid.uuid4().hex}"
            first = old.append(stream, [NewEvent("Tick", {"n": 1})], idempotency_key=key)
            again = old.append(stream, [NewEvent("Tick", {"n": 1})], idempotency_key=key)
            assert again == AppendResult(stream, 1, 1, first.positions, duplicate=True)
            with pytest.raises(WrongExpectedVersion) as info:
                old.append(stream, [NewEvent("Tick", {"n": 2})], expected_version=NO_STREAM)
            assert info.value.actual == 1
            with pytest.raises(IdempotencyConflict):
                old.append(stream, [NewEvent("Tick", {"n": 3})], idempotency_key=key)
            assert old.verify_chain(stream).ok
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
