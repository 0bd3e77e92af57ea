"""Concurrent writers and readers (DESIGN.md §2, invariants 2, 3 and 4).

Everything here runs in a throwaway database whose log has a test-only
trigger that sleeps a random 0-5 ms after each inserted row, so that
transactions commit in an order unrelated to their transaction ids and
positions: the situation in which a reader paging by id skips events.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventstore import (
    ANY,
    NO_STREAM,
    AppendResult,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    Settings,
    StoredEvent,
    WrongExpectedVersion,
)
from eventstore.writing import GROUPS_IN_FLIGHT
from tests.support.database import admin_dsn, dsn_for, run_cli

JITTER_TRIGGER = """
CREATE FUNCTION public.test_commit_jitter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(random() * 0.005);
    RETURN NULL;
END $$;
CREATE TRIGGER test_commit_jitter AFTER INSERT ON utcp.stored_events
    FOR EACH ROW EXECUTE FUNCTION public.test_commit_jitter();
"""

WRITERS = 6
EVENTS_PER_WRITER = 250  # 1500 events in all
DRAIN_DEADLINE = 120.0  # seconds; a long transaction elsewhere on the cluster only delays readers


class JitterDb:
    def __init__(self, name: str, admin: str, writer: str) -> None:
        self.name = name
        self.admin_dsn = admin
        self.writer_dsn = writer


@pytest.fixture(scope="module")
def jitter_db(writer_dsn: str) -> Iterator[JitterDb]:
    """A throwaway database with the commit-jitter trigger; the store
    connects to it as the session's least-privilege writer role."""
    name = f"utcp_conc_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = dsn_for(name)
    run_cli("db", "deploy", "--dsn", admin)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(JITTER_TRIGGER)
        role = conninfo_to_dict(writer_dsn)["user"]
        yield JitterDb(name, admin, dsn_for(name, user=role))
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


#: Stores of one writer process each, under group commit: WRITERS threads
#: spread over them, more per store than its groups in flight
#: (writing.GROUPS_IN_FLIGHT), so that appends share groups, and commits go
#: out of position order between the groups in flight.
GROUP_STORES = 2


@pytest.fixture(scope="module", params=["direct", "groups"])
def conc_stores(request: pytest.FixtureRequest, jitter_db: JitterDb) -> Iterator[list[EventStore]]:
    """The writers' stores: one store, every append its own call ("direct"),
    or GROUP_STORES stores under group commit, as separate processes would
    be ("groups"). The tests below run against both."""
    grouped = request.param == "groups"
    assert WRITERS // GROUP_STORES > GROUPS_IN_FLIGHT, "no writer would ever queue for a group"
    settings = Settings(
        pool_min_size=2,
        pool_max_size=12,
        retry_timeout=20.0,
        application_name="utcp-conc-test",
        group_commit=grouped,
    )
    stores = [
        EventStore.open(jitter_db.writer_dsn, settings)
        for _ in range(GROUP_STORES if grouped else 1)
    ]
    try:
        yield stores
    finally:
        for s in stores:
            s.close()


@pytest.fixture
def conc_store(conc_stores: list[EventStore]) -> EventStore:
    return conc_stores[0]


def grouped(stores: list[EventStore]) -> bool:
    return stores[0].settings.group_commit


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


def all_visible(store: EventStore) -> bool:
    """No committed event is held back from readers by a transaction still
    running somewhere in the cluster (DESIGN.md §4: latency, not correctness)."""
    return store.status().events_behind_horizon == 0


def read_everything(store: EventStore, expected: int, *, page: int = 1000) -> list[StoredEvent]:
    """The whole log from the start, waiting until ``expected`` events are
    visible or nothing is held back any more (then short means missed)."""
    deadline = time.monotonic() + DRAIN_DEADLINE
    while True:
        visible = all_visible(store)
        events: list[StoredEvent] = []
        after: str | None = None
        while batch := store.read_all(after=after, limit=page):
            events.extend(batch)
            after = batch[-1].checkpoint
        if len(events) >= expected or visible or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def committed_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
    assert row is not None
    return int(row[0])


def test_readers_see_every_event_once_in_the_final_order_despite_out_of_order_commits(
    conc_stores: list[EventStore], jitter_db: JitterDb
) -> None:
    store = conc_stores[0]
    run = uuid.uuid4().hex[:8]
    hot = [f"hot-{run}-{i}" for i in range(2)]
    before = committed_count(jitter_db.admin_dsn)

    written: list[tuple[str, tuple[uuid.UUID, ...], AppendResult]] = []
    written_lock = threading.Lock()
    writers_done = threading.Event()
    target: list[int] = []  # set once the writers are done: how many events exist

    def writer(w: int) -> None:
        store = conc_stores[w % len(conc_stores)]
        rng = random.Random(f"{run}-{w}")
        own = [f"own-{run}-{w}-{k}" for k in range(2)]
        own_version = dict.fromkeys(own, 0)
        left = EVENTS_PER_WRITER
        n = 0
        while left:
            size = min(left, rng.choice([1, 1, 1, 2, 3, 5]))
            ids = tuple(uuid.uuid4() for _ in range(size))
            events = [
                NewEvent("Tick", {"writer": w, "n": n + i}, event_id=ids[i]) for i in range(size)
            ]
            key = f"conc-{run}-{w}-{n}" if rng.random() < 0.3 else None
            if rng.random() < 0.4:
                stream = rng.choice(hot)  # contended: several writers, expected_version=ANY
                result = store.append(stream, events, expected_version=ANY, idempotency_key=key)
            else:
                stream = rng.choice(own)  # this writer's alone: exact expected versions
                result = store.append(
                    stream, events, expected_version=own_version[stream], idempotency_key=key
                )
                own_version[stream] = result.last_version
            assert result.duplicate is False
            assert result.last_version - result.first_version + 1 == size
            with written_lock:
                written.append((stream, ids, result))
            left -= size
            n += size

    seen: list[StoredEvent] = []

    def reader() -> None:
        after: str | None = None
        deadline = time.monotonic() + DRAIN_DEADLINE + 60
        while time.monotonic() < deadline:
            page = store.read_all(after=after, limit=50)
            if page:
                seen.extend(page)
                after = page[-1].checkpoint
                continue
            if writers_done.is_set():
                if len(seen) >= target[0]:
                    return
                # Short: either held back by a transaction elsewhere in the
                # cluster (wait), or missed (stop, and let the asserts say so).
                if all_visible(store) and not store.read_all(after=after, limit=50):
                    return
            time.sleep(0.002)

    # A naive reader that pages by position alone, as a bigserial reader
    # would: it is what the jitter defeats, so it proves the test is harsh.
    naive_seen: list[uuid.UUID] = []

    def naive_reader() -> None:
        last = 0
        with psycopg.connect(jitter_db.admin_dsn, autocommit=True) as conn:
            while not writers_done.is_set():
                rows = conn.execute(
                    "SELECT position, event_id FROM utcp.stored_events WHERE position > %s "
                    "ORDER BY position LIMIT 50",
                    (last,),
                ).fetchall()
                if rows:
                    naive_seen.extend(r[1] for r in rows)
                    last = rows[-1][0]
                else:
                    time.sleep(0.001)

    read_thread = threading.Thread(target=reader, daemon=True)
    naive_thread = threading.Thread(target=naive_reader, daemon=True)
    read_thread.start()
    naive_thread.start()
    try:
        run_threads(WRITERS, writer)
    finally:
        target.append(committed_count(jitter_db.admin_dsn))
        writers_done.set()
        naive_thread.join(timeout=60)
        read_thread.join(timeout=DRAIN_DEADLINE + 90)
    assert not read_thread.is_alive()

    total_written = WRITERS * EVENTS_PER_WRITER
    assert target[0] == before + total_written
    written_ids = {i for _, ids, _ in written for i in ids}
    assert len(written_ids) == total_written

    # Every committed event exactly once.
    seen_ids = [e.event_id for e in seen]
    duplicates = [i for i, c in Counter(seen_ids).items() if c > 1]
    assert not duplicates, f"the tailing reader saw {len(duplicates)} events twice"
    assert len(seen_ids) == target[0], "the tailing reader missed events"
    assert written_ids <= set(seen_ids)
    assert store.read_all(after=seen[-1].checkpoint, limit=50) == []

    # In the final order, the same for every reader.
    full = read_everything(store, target[0])
    again = read_everything(store, target[0], page=7)
    assert [e.event_id for e in full] == seen_ids
    assert [e.event_id for e in again] == seen_ids
    assert [e.checkpoint for e in full] == [e.checkpoint for e in seen]

    # The harshness was real: paging by position alone lost events.
    naive_missed = written_ids - set(naive_seen)
    assert naive_missed, (
        "commits never went out of position order: the jitter trigger did not work, "
        "so this test proved nothing"
    )

    # Invariant 3 under the same writers: versions 1..n, no gaps, no duplicates,
    # and each AppendResult is what is stored.
    stored_by_id = {e.event_id: e for e in full}
    per_stream: dict[str, int] = defaultdict(int)
    for stream, ids, result in written:
        per_stream[stream] += len(ids)
        stored = [stored_by_id[i] for i in ids]
        assert all(e.stream_id == stream for e in stored)
        assert [e.stream_version for e in stored] == list(
            range(result.first_version, result.last_version + 1)
        )
        assert tuple(e.position for e in stored) == result.positions
    for stream, count in per_stream.items():
        versions = [e.stream_version for e in store.read_stream(stream)]
        assert versions == list(range(1, count + 1)), stream
    report = store.verify_chain()
    assert report.ok, report.problems

    # Under group commit the appends shared transactions (the events of one
    # group share its tx_id).
    transactions = {stored_by_id[ids[0]].checkpoint.split("/")[0] for _, ids, _ in written}
    if grouped(conc_stores):
        assert len(transactions) < len(written), "no two appends shared a group"
    else:
        assert len(transactions) == len(written)


def test_concurrent_expected_version_writers_exactly_one_wins_per_version(
    conc_store: EventStore,
) -> None:
    store = conc_store
    stream = f"race-{uuid.uuid4().hex[:10]}"
    threads, rounds = 6, 20
    barrier = threading.Barrier(threads)
    outcomes: list[list[Any]] = [[None] * threads for _ in range(rounds)]

    def contender(t: int) -> None:
        for r in range(rounds):
            barrier.wait(timeout=60)
            try:
                outcomes[r][t] = store.append(
                    stream, [NewEvent("Bid", {"round": r, "thread": t})], expected_version=r
                )
            except WrongExpectedVersion as exc:
                outcomes[r][t] = exc

    run_threads(threads, contender)

    winners: list[int] = []
    for r, row in enumerate(outcomes):
        wins = [t for t, o in enumerate(row) if isinstance(o, AppendResult)]
        assert len(wins) == 1, f"round {r}: {len(wins)} writers won version {r + 1}"
        winners.append(wins[0])
        result = row[wins[0]]
        assert (result.first_version, result.last_version) == (r + 1, r + 1)
        for t, o in enumerate(row):
            if t != wins[0]:
                assert isinstance(o, WrongExpectedVersion), o
                assert o.expected == r
                assert o.actual == r + 1
                assert o.stream_id == stream

    events = store.read_stream(stream)
    assert [e.stream_version for e in events] == list(range(1, rounds + 1))
    assert [(e.data["round"], e.data["thread"]) for e in events] == list(enumerate(winners))
    assert store.verify_chain(stream).ok


def count_rows(dsn: str, stream_ids: list[str], key: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        events = conn.execute(
            "SELECT count(*) FROM utcp.stored_events WHERE stream_id = ANY(%s)", (stream_ids,)
        ).fetchone()
        keys = conn.execute(
            "SELECT count(*) FROM utcp.idempotency_keys WHERE key = %s", (key,)
        ).fetchone()
    assert events is not None and keys is not None
    return int(events[0]), int(keys[0])


def same_key_race(store: EventStore, threads: int, expected: Any) -> tuple[str, str, list[Any]]:
    """``threads`` identical keyed appends, released together by a barrier."""
    stream = f"same-key-{uuid.uuid4().hex[:10]}"
    key = f"order-{uuid.uuid4().hex}"
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def call(t: int) -> None:
        batch = [NewEvent("OrderPlaced", {"qty": 3}), NewEvent("OrderAccepted", {"ok": True})]
        barrier.wait(timeout=60)
        results[t] = store.append(stream, batch, expected_version=expected, idempotency_key=key)

    run_threads(threads, call)
    return stream, key, results


@pytest.mark.parametrize("expected", [ANY, NO_STREAM], ids=["ANY", "NO_STREAM"])
def test_concurrent_appends_with_one_key_write_once(
    conc_store: EventStore, jitter_db: JitterDb, expected: Any
) -> None:
    threads = 8
    for _ in range(3):
        stream, key, results = same_key_race(conc_store, threads, expected)
        assert all(isinstance(r, AppendResult) for r in results)
        assert sum(not r.duplicate for r in results) == 1
        first = next(r for r in results if not r.duplicate)
        assert {(r.stream_id, r.first_version, r.last_version, r.positions) for r in results} == {
            (stream, 1, 2, first.positions)
        }
        assert count_rows(jitter_db.admin_dsn, [stream], key) == (2, 1)
        assert tuple(e.position for e in conc_store.read_stream(stream)) == first.positions


@pytest.mark.parametrize("same_stream", [True, False], ids=["same-stream", "other-streams"])
def test_concurrent_appends_with_one_key_and_different_requests_conflict(
    conc_store: EventStore, jitter_db: JitterDb, same_stream: bool
) -> None:
    store = conc_store
    threads = 8
    run = uuid.uuid4().hex[:10]
    key = f"conflict-{run}"
    streams = [f"keyed-{run}" if same_stream else f"keyed-{run}-{t}" for t in range(threads)]
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def call(t: int) -> None:
        barrier.wait(timeout=60)
        try:
            outcomes[t] = store.append(
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
    assert count_rows(jitter_db.admin_dsn, sorted(set(streams)), key) == (1, 1)
    stored = store.read_stream(streams[wins[0]])
    assert [e.data["thread"] for e in stored] == [wins[0]]
