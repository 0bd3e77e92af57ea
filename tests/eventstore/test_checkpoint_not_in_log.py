"""read_all(after=…) with a checkpoint whose event is not in the log fails
loudly (CheckpointNotInLog), instead of paging nothing for ever: the case of
a reader or projection that was ahead of a restored log (issue 9, "Restores
that readers survive"). Normal checkpoints page as before."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from eventstore import (
    CheckpointNotInLog,
    EventStore,
    EventStoreError,
    NewEvent,
    Settings,
    StoredEvent,
)
from tests.support.database import run_cli
from tests.support.horizon import wait_for_horizon


def read_until(store: EventStore, after: str | None, count: int) -> list[StoredEvent]:
    """Page (2 at a time) through up to ``count`` events after ``after``,
    once the readers' horizon has passed every committed write (a
    transaction elsewhere on the shared server can hold it back)."""
    wait_for_horizon(store)
    seen: list[StoredEvent] = []
    checkpoint = after
    while len(seen) < count and (page := store.read_all(after=checkpoint, limit=2)):
        seen.extend(page)
        checkpoint = page[-1].checkpoint
    return seen


def read_everything(store: EventStore, dsn: str) -> list[StoredEvent]:
    """The whole log, once every committed event is visible to readers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
    assert row is not None
    return read_until(store, None, int(row[0]))


@pytest.fixture(scope="module")
def own_store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as s:
        yield s


def test_the_start_of_an_empty_log_is_fine(own_store: EventStore) -> None:
    # First in this module: the log is empty.
    assert own_store.read_all() == []
    assert own_store.read_all(after="0/0") == []
    assert own_store.read_all(after="0/0", types=["Opened"]) == []


def test_normal_checkpoints_page_as_before(own_store: EventStore) -> None:
    stream = "ckpt-normal"
    own_store.append(stream, [NewEvent("Opened", {"n": 0})])
    own_store.append(stream, [NewEvent("Moved", {"n": i}) for i in range(1, 6)])
    events = read_until(own_store, None, 6)
    assert [e.data["n"] for e in events] == list(range(6))
    # Pages of any size from any checkpoint: the events after it, once each,
    # payloads intact (the checkpoint's own row is only a proof, dropped).
    for i, event in enumerate(events):
        after = own_store.read_all(after=event.checkpoint, limit=100)
        assert after == events[i + 1 :]
        assert own_store.read_all(after=event.checkpoint, limit=1) == events[i + 1 : i + 2]
    assert own_store.read_all(after=events[-1].checkpoint) == []
    # Types: the checkpoint may be an event of another type.
    moved = own_store.read_all(after=events[0].checkpoint, types=["Moved"])
    assert moved == events[1:]
    assert own_store.read_all(after=events[2].checkpoint, types=["Opened"]) == []
    # From the start, the limit is honoured.
    assert own_store.read_all(limit=4) == events[:4]
    # Leading zeros name the same event.
    tx, pos = events[2].checkpoint.split("/")
    assert own_store.read_all(after=f"000{tx}/{pos}") == events[3:]


def test_a_fabricated_checkpoint_fails_loudly(dsn: str, own_store: EventStore) -> None:
    own_store.append("ckpt-fab", [NewEvent("Opened", {"n": 0})])
    last = read_everything(own_store, dsn)[-1]
    tx, pos = last.checkpoint.split("/")
    for fake in (f"{tx}/{int(pos) + 10_000}", f"{int(tx) + 10_000}/{pos}", f"{tx}/{int(pos) - 1}"):
        with pytest.raises(CheckpointNotInLog) as caught:
            own_store.read_all(after=fake)
        error = caught.value
        assert isinstance(error, EventStoreError)
        assert error.checkpoint == fake
        assert error.operation == "read_all"
        assert "eventstore project rebuild" in str(error)
        with pytest.raises(CheckpointNotInLog):
            own_store.read_all(after=fake, types=["Opened"])


def test_a_checkpoint_of_a_removed_event_fails_and_earlier_ones_resume(
    dsn: str, own_store: EventStore
) -> None:
    """What a restore to an earlier point looks like to a reader: the event
    its checkpoint names is gone. (Simulated by a superuser deleting the
    newest events past the guards, in this throwaway database.)"""
    stream = "ckpt-removed"
    own_store.append(stream, [NewEvent("Opened", {"n": 0})])
    before = read_everything(own_store, dsn)
    kept = before[-1]
    own_store.append(stream, [NewEvent("Lost", {"n": i}) for i in range(3)])
    lost = read_until(own_store, kept.checkpoint, 3)
    assert [e.type for e in lost] == ["Lost"] * 3
    with psycopg.connect(dsn, autocommit=True) as admin, admin.transaction():
        admin.execute("ALTER TABLE utcp.stored_events DISABLE TRIGGER USER")
        admin.execute(
            "DELETE FROM utcp.stored_events WHERE position = ANY(%s)",
            ([e.position for e in lost],),
        )
        admin.execute("ALTER TABLE utcp.stored_events ENABLE TRIGGER USER")
    # Appends after the "restore".
    own_store.append("ckpt-after", [NewEvent("After", {"n": i}) for i in range(2)])
    for gone in lost:
        with pytest.raises(CheckpointNotInLog, match="project rebuild"):
            own_store.read_all(after=gone.checkpoint)
    # A reader at the restored head sees every new event, once.
    after = read_until(own_store, kept.checkpoint, 2)
    assert [(e.type, e.data["n"]) for e in after] == [("After", 0), ("After", 1)]
    assert own_store.read_all(after=after[-1].checkpoint) == []


def test_the_cli_says_it_in_one_line(own_store: EventStore, dsn: str) -> None:
    own_store.append("ckpt-cli", [NewEvent("Opened", {"n": 0})])
    last = read_everything(own_store, dsn)[-1]
    tx, pos = last.checkpoint.split("/")
    proc = run_cli("tail", "--after", f"{tx}/{int(pos) + 999}", "--dsn", dsn, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "names no event in this log" in lines[0]
    assert "eventstore project rebuild" in lines[0]
