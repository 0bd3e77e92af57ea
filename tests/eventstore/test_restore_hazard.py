"""The restore hazard (docs/design.md §4, "Restores"; docs/runbook.md, "Restores").

After a logical restore into a new cluster, the log holds transaction ids
ahead of the cluster's counter: new events would sort before old ones, and a
reader whose checkpoint is past them (a projection restored with the log)
would never see them. The store must notice and refuse every append with an
error that says what to do; reads keep working.

Simulated in a throwaway database: the superuser inserts one event whose
``tx_id`` is a million transactions ahead of the cluster (``tx_id`` is only
a DEFAULT, so the table owner can set it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore import EventStore, LogOrderHazard, NewEvent, Settings
from tests.support.database import as_role, deployed_database, log_counts, wait_until

#: A correctly hashed version-1 event, written by the owner with a tx_id far
#: ahead of the cluster: what a logical restore into a new cluster looks like.
INSERT_FUTURE_EVENT = """
INSERT INTO utcp.stored_events
       (event_id, stream_id, stream_version, type, data, metadata, symbol,
        occurred_at, created_at, tx_id, prev_hash, hash)
SELECT %(id)s, %(stream)s, 1, 'Restored', '{"restored": true}'::jsonb, NULL, NULL,
       t.now, t.now, (pg_current_xact_id()::text::bigint + 1000000)::text::xid8, NULL,
       sha256(utcp.event_content(%(id)s, %(stream)s, 1, 'Restored', '{"restored": true}'::jsonb,
                                 NULL, NULL, t.now, t.now))
  FROM (SELECT now() AS now) t
"""


class HazardDb:
    def __init__(self, admin: str, writer: str) -> None:
        self.admin_dsn = admin
        self.writer_dsn = writer
        self.restored_stream = f"restored-{uuid.uuid4().hex[:10]}"
        self.restored_event = uuid.uuid4()
        self.early: EventStore | None = None

    def counts(self) -> tuple[int, int]:
        return log_counts(self.admin_dsn)


def settings() -> Settings:
    # One connection, kept: the early store's connection predates the hazard.
    return Settings(pool_min_size=1, pool_max_size=1, retry_timeout=5.0)


@pytest.fixture(scope="module")
def hazard_db(writer_dsn: str) -> Iterator[HazardDb]:
    """A log with ordinary events, then one from "the future"; ``early`` is a
    store whose connection was opened before that event appeared."""
    with deployed_database("utcp_hazard") as admin:
        db = HazardDb(admin, as_role(admin, writer_dsn))
        with EventStore.open(db.writer_dsn, settings()) as early:
            early.append("before-1", [NewEvent("Tick", {"n": 1})])
            early.append("before-2", [NewEvent("Tick", {"n": 1})])
            assert early.status().xid_hazard is None
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    INSERT_FUTURE_EVENT, {"id": db.restored_event, "stream": db.restored_stream}
                )
            db.early = early
            yield db


@pytest.fixture(scope="module")
def fresh(hazard_db: HazardDb) -> Iterator[EventStore]:
    """A store opened after the hazard appeared (as after a restore)."""
    with EventStore.open(hazard_db.writer_dsn, settings()) as s:
        yield s


@pytest.fixture
def early(hazard_db: HazardDb) -> EventStore:
    assert hazard_db.early is not None
    return hazard_db.early


def assert_refused(store: EventStore, db: HazardDb, stream: str) -> LogOrderHazard:
    before = db.counts()
    key = f"hazard-{uuid.uuid4().hex}"
    with pytest.raises(LogOrderHazard) as info:
        store.append(stream, [NewEvent("Tick", {"n": 2})], idempotency_key=key)
    assert db.counts() == before, "a refused append wrote something"
    err = info.value
    assert err.operation == "append"
    assert err.stream_id == stream
    assert "runbook" in str(err), f"the error does not say what to do: {err}"
    return err


def test_open_still_works_and_reads_are_allowed(hazard_db: HazardDb, fresh: EventStore) -> None:
    events = fresh.read_stream(hazard_db.restored_stream)
    assert [e.event_id for e in events] == [hazard_db.restored_event]
    assert fresh.read_stream("before-1")[0].data == {"n": 1}
    # Readable once no older transaction runs anywhere on the server (a
    # shared server's other sessions may hold the horizon back a while).
    wait_until(
        lambda: {e.stream_id for e in fresh.read_all(limit=10)} >= {"before-1", "before-2"},
        "the events before the restore to be readable",
    )
    assert fresh.verify_chain().ok


def test_status_reports_the_hazard(
    hazard_db: HazardDb, fresh: EventStore, early: EventStore
) -> None:
    for store in (fresh, early):
        hazard = store.status().xid_hazard
        assert hazard is not None
        assert "runbook" in hazard and "Restores" in hazard


def test_append_to_the_restored_stream_is_refused(hazard_db: HazardDb, fresh: EventStore) -> None:
    assert_refused(fresh, hazard_db, hazard_db.restored_stream)


def test_append_to_any_other_stream_is_refused(hazard_db: HazardDb, fresh: EventStore) -> None:
    assert_refused(fresh, hazard_db, "before-1")
    assert_refused(fresh, hazard_db, f"new-{uuid.uuid4().hex[:8]}")


def test_a_store_connected_before_the_hazard_refuses_the_restored_stream(
    hazard_db: HazardDb, early: EventStore
) -> None:
    """The database's own check (utcp.append_events) catches it; the error
    must still say what to do."""
    assert_refused(early, hazard_db, hazard_db.restored_stream)


def test_a_store_connected_before_the_hazard_refuses_every_stream(
    hazard_db: HazardDb, early: EventStore
) -> None:
    """docs/runbook.md: the store "refuses every append". A store whose
    connections predate the hazard (say, a data-only restore into a database
    the application was already connected to) must not write new events
    with transaction ids below the restored ones: a reader checkpointed past
    the restored events would never see them."""
    assert_refused(early, hazard_db, "before-2")
    assert_refused(early, hazard_db, f"new-{uuid.uuid4().hex[:8]}")


def test_the_hazard_is_not_a_reason_to_refuse_reads(hazard_db: HazardDb, early: EventStore) -> None:
    assert early.read_stream(hazard_db.restored_stream)
    assert early.stream_version(hazard_db.restored_stream) == 1
    found: Any = early.find_events(type="Restored").items
    assert [e.event_id for e in found] == [hazard_db.restored_event]
