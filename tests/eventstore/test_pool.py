"""The store's pool hands out the most recently returned connection first
(eventstore.pool), and is otherwise psycopg_pool's: every connection still
gets used when callers overlap, and a broken one is replaced."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from eventstore import EventStore, NewEvent, Settings


@pytest.fixture
def pooled(database_dsn: str) -> Iterator[EventStore]:
    # No wake-ups: the notifier's thread would be a second caller of the pool,
    # taking the warm connection now and then (what these tests count).
    settings = Settings(pool_min_size=4, pool_max_size=4, notify_channel="")
    with EventStore.open(database_dsn, settings) as store:
        yield store


def backend_pid(store: EventStore) -> int:
    with store.connection() as conn:
        return conn.info.backend_pid


def test_one_caller_at_a_time_stays_on_one_backend(pooled: EventStore, stream: str) -> None:
    first = backend_pid(pooled)
    pids = set()
    for n in range(10):
        pooled.append(stream, [NewEvent("Tick", {"n": n})])
        pids.add(backend_pid(pooled))
    assert pids == {first}


def test_overlapping_callers_get_different_connections(pooled: EventStore) -> None:
    held: list[int] = []
    release = threading.Event()
    ready = threading.Barrier(5)

    def hold() -> None:
        with pooled.connection() as conn:
            held.append(conn.info.backend_pid)
            ready.wait(timeout=30)
            release.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=30)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(held)) == 4


def test_a_terminated_connection_is_not_handed_out_again(
    pooled: EventStore, stream: str, database_dsn: str
) -> None:
    pid = backend_pid(pooled)
    with psycopg.connect(database_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # The store's retry replaces the dead connection; the append lands once.
    result = pooled.append(stream, [NewEvent("Tick", {"n": 1})])
    assert result.last_version == 1
    assert backend_pid(pooled) != pid
