"""Tamper evidence (docs/design.md §2, invariant 5): each event's hash chains to
the previous event of its stream, and verify_chain() finds any changed,
removed or re-ordered event.

Tampering needs the append-only trigger disabled, so it happens in a
throwaway database (created with `eventstore db deploy`, dropped at the
end): the shared test database stays clean.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore import Anchor, ChainReport, EventStore, NewEvent, Settings
from tests.support.database import deployed_database
from tests.support.horizon import wait_for_horizon

TRIGGER = "stored_events_no_update_delete"


class ChainDb:
    def __init__(self, store: EventStore, conn: psycopg.Connection[Any]) -> None:
        self.store = store
        self.conn = conn
        #: streams some test has tampered with
        self.tampered: set[str] = set()
        #: untouched streams written when the database was made
        self.clean: list[str] = []

    def tamper(self, stream: str, *statements: str) -> None:
        """Run ``statements`` (with %(stream)s) with the guard trigger off,
        as a superuser would, in one transaction."""
        self.tampered.add(stream)
        with self.conn.transaction():
            self.conn.execute(f"ALTER TABLE utcp.stored_events DISABLE TRIGGER {TRIGGER}")
            for statement in statements:
                self.conn.execute(statement, {"stream": stream})
            self.conn.execute(f"ALTER TABLE utcp.stored_events ENABLE ALWAYS TRIGGER {TRIGGER}")

    def new_stream(self, events: int = 4) -> str:
        """A stream written in two batches (so the chain crosses appends)."""
        stream = f"chain-{uuid.uuid4().hex[:12]}"
        half = events // 2
        self.store.append(stream, [NewEvent("Step", {"n": i}) for i in range(1, half + 1)])
        self.store.append(stream, [NewEvent("Step", {"n": i}) for i in range(half + 1, events + 1)])
        assert self.store.verify_chain(stream).ok
        return stream


@pytest.fixture(scope="module")
def chain_db() -> Iterator[ChainDb]:
    with (
        deployed_database("utcp_chain") as dsn,
        EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as store,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        db = ChainDb(store, conn)
        for i in range(5):
            stream = f"clean{i}-{uuid.uuid4().hex[:8]}"
            for batch in range(3):
                store.append(
                    stream,
                    [
                        NewEvent(
                            "Step",
                            {"i": i, "batch": batch, "k": k, "symbol": "AAPL"},
                            {"actor": "seed"} if k % 2 else None,
                        )
                        for k in range(i + 1)
                    ],
                )
            db.clean.append(stream)
        yield db


def problems(report: ChainReport) -> list[tuple[str, int]]:
    return [(p.stream_id, p.stream_version) for p in report.problems]


# -- a sound chain ------------------------------------------------------------


def test_chain_links_each_event_to_the_previous_one(store: EventStore, stream: str) -> None:
    store.append(stream, [NewEvent("A", {"n": 1})])
    store.append(stream, [NewEvent("B", {"n": i}) for i in range(2, 6)])
    store.append(stream, [NewEvent("C", {"n": 6}, {"m": 1})])
    events = store.read_stream(stream)
    assert [e.stream_version for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].prev_hash is None
    for previous, event in itertools.pairwise(events):
        assert event.prev_hash == previous.hash
    assert all(len(e.hash) == 32 for e in events)
    assert len({e.hash for e in events}) == len(events)
    # the writer role can verify (the shared database, as the application)
    report = store.verify_chain(stream)
    assert report.ok
    assert (report.events_checked, report.streams_checked) == (6, 1)


def test_identical_payloads_still_hash_differently(store: EventStore, stream: str) -> None:
    store.append(stream, [NewEvent("Same", {"x": 1}) for _ in range(3)])
    other = f"{stream}-twin"
    store.append(other, [NewEvent("Same", {"x": 1}) for _ in range(3)])
    hashes = [e.hash for s in (stream, other) for e in store.read_stream(s)]
    assert len(set(hashes)) == 6


def test_fresh_log_verifies_clean(chain_db: ChainDb) -> None:
    report = chain_db.store.verify_chain()
    assert {s for s, _ in problems(report)} <= chain_db.tampered
    if not chain_db.tampered:
        assert report.ok
    total = chain_db.conn.execute(
        "SELECT count(*), count(DISTINCT stream_id) FROM utcp.stored_events"
    ).fetchone()
    assert (report.events_checked, report.streams_checked) == total
    for stream in chain_db.clean:
        clean = chain_db.store.verify_chain(stream)
        assert clean.ok
        assert clean.streams_checked == 1


# -- tampering ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "data = data || '{\"n\": 999}'",
        "data = '{}'",
        'metadata = \'{"actor": "mallory"}\'',
        "type = 'Forged'",
        "symbol = 'MSFT'",
        "occurred_at = occurred_at - interval '1 day'",
        "created_at = created_at + interval '1 microsecond'",
        "event_id = gen_random_uuid()",
    ],
)
def test_a_changed_event_is_detected(chain_db: ChainDb, change: str) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        f"UPDATE utcp.stored_events SET {change}"
        " WHERE stream_id = %(stream)s AND stream_version = 2",
    )
    report = chain_db.store.verify_chain(stream)
    assert not report.ok
    assert problems(report) == [(stream, 2)]
    assert "hash" in report.problems[0].problem
    assert (stream, 2) in problems(chain_db.store.verify_chain())
    for clean in chain_db.clean:
        assert chain_db.store.verify_chain(clean).ok


def test_a_changed_event_with_a_recomputed_hash_breaks_the_next_link(chain_db: ChainDb) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        "UPDATE utcp.stored_events SET data = '{\"n\": -1}' "
        "WHERE stream_id = %(stream)s AND stream_version = 2",
        "UPDATE utcp.stored_events SET hash = utcp.event_hash_v2(prev_hash, event_id, stream_id,"
        " stream_version, type, data, metadata, symbol, occurred_at, created_at, recorded_by)"
        " WHERE stream_id = %(stream)s AND stream_version = 2",
    )
    report = chain_db.store.verify_chain(stream)
    assert problems(report) == [(stream, 3)]
    assert "prev_hash" in report.problems[0].problem


def test_a_deleted_middle_event_is_detected(chain_db: ChainDb) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(stream)s AND stream_version = 2",
    )
    report = chain_db.store.verify_chain(stream)
    assert problems(report) == [(stream, 3)]
    assert "gap" in report.problems[0].problem
    assert (stream, 3) in problems(chain_db.store.verify_chain())


def test_a_deleted_first_event_is_detected(chain_db: ChainDb) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(stream)s AND stream_version = 1",
    )
    assert problems(chain_db.store.verify_chain(stream)) == [(stream, 2)]


def test_swapped_data_is_detected(chain_db: ChainDb) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        "UPDATE utcp.stored_events e SET data = o.data FROM utcp.stored_events o"
        " WHERE e.stream_id = %(stream)s AND o.stream_id = e.stream_id"
        " AND (e.stream_version, o.stream_version) IN ((2, 3), (3, 2))",
    )
    data = [e.data["n"] for e in chain_db.store.read_stream(stream)]
    assert data == [1, 3, 2, 4]  # the swap happened
    report = chain_db.store.verify_chain(stream)
    assert problems(report) == [(stream, 2), (stream, 3)]
    found = problems(chain_db.store.verify_chain())
    assert (stream, 2) in found and (stream, 3) in found


def test_reordered_events_are_detected(chain_db: ChainDb) -> None:
    stream = chain_db.new_stream()
    chain_db.tamper(
        stream,
        "UPDATE utcp.stored_events SET stream_version = 100"
        " WHERE stream_id = %(stream)s AND stream_version = 2",
        "UPDATE utcp.stored_events SET stream_version = 2"
        " WHERE stream_id = %(stream)s AND stream_version = 3",
        "UPDATE utcp.stored_events SET stream_version = 3"
        " WHERE stream_id = %(stream)s AND stream_version = 100",
    )
    found = problems(chain_db.store.verify_chain(stream))
    assert (stream, 2) in found and (stream, 3) in found


def anchor_everything(store: EventStore) -> Anchor:
    """An anchor over every committed event: first wait (bounded) until none
    is behind the readers' horizon, which a transaction elsewhere in the
    cluster can hold back for a while."""
    wait_for_horizon(store)
    anchor = store.anchor()
    assert anchor is not None
    return anchor


def test_a_deleted_last_event_is_detected_by_the_anchors(chain_db: ChainDb) -> None:
    """Removing the newest event of a stream leaves a chain that is valid in
    itself; the anchors taken after it show the removal (docs/design.md §2.5;
    docs/architecture.md, "Tamper evidence")."""
    stream = chain_db.new_stream()
    anchor = anchor_everything(chain_db.store)
    assert chain_db.store.verify_chain().anchor_problems == ()
    chain_db.tamper(
        stream,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(stream)s AND stream_version = 4",
    )
    assert chain_db.store.stream_version(stream) == 3
    assert chain_db.store.verify_chain(stream).problems == ()  # the stream's own chain is fine
    report = chain_db.store.verify_chain()
    assert not report.ok, "deleting a stream's last event went unnoticed"
    flagged = [p for p in report.anchor_problems if p.anchor_id == anchor.anchor_id]
    assert flagged and "found now" in flagged[0].problem
    # A new anchor over the tampered log does not launder the old one.
    chain_db.store.anchor()
    again = chain_db.store.verify_chain().anchor_problems
    assert anchor.anchor_id in {p.anchor_id for p in again}


def test_a_rewritten_hash_is_detected_by_the_anchors(chain_db: ChainDb) -> None:
    """Rewriting a whole stream's hashes consistently (as someone who knows
    the scheme could) keeps its chain valid; the anchor still shows it."""
    stream = chain_db.new_stream(events=2)
    anchor = anchor_everything(chain_db.store)
    chain_db.tamper(
        stream,
        "UPDATE utcp.stored_events SET data = '{\"n\": 99}', hash = utcp.event_hash_v2("
        " prev_hash, event_id, stream_id, stream_version, type, '{\"n\": 99}', metadata, symbol,"
        " occurred_at, created_at, recorded_by)"
        " WHERE stream_id = %(stream)s AND stream_version = 2",
    )
    assert chain_db.store.verify_chain(stream).problems == ()
    assert anchor.anchor_id in {p.anchor_id for p in chain_db.store.verify_chain().anchor_problems}
