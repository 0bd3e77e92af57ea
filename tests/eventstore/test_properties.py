"""Property tests against the real database (hypothesis).

* stream versions are 1..n without gaps, and streams read back intact;
* read_all in any page sizes, resumed from checkpoints, with appends in
  between, yields the same sequence as one big read;
* retries never duplicate: whatever transient failures hit an append (before
  or after its statement, on any attempt), it is stored once and its result
  describes what is stored.

A dedicated throwaway database: read_all from the start sees only this
module's events.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import stamina
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventstore import ANY, EventStore, NewEvent, Settings, StoredEvent
from tests.eventstore.test_crash_retry import FaultInjector
from tests.support.database import admin_dsn, dsn_for, run_cli

APP_NAME = f"utcp-props-{uuid.uuid4().hex[:8]}"


class PropDb:
    def __init__(self, name: str, admin: str) -> None:
        self.name = name
        self.admin_dsn = admin

    def rows(self, stream: str) -> int:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM utcp.stored_events WHERE stream_id = %s", (stream,)
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def prop_db(writer_dsn: str) -> Iterator[tuple[PropDb, str]]:
    name = f"utcp_props_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = dsn_for(name)
    run_cli("db", "deploy", "--dsn", admin)
    role = conninfo_to_dict(writer_dsn)["user"]
    try:
        yield PropDb(name, admin), dsn_for(name, user=role)
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def db(prop_db: tuple[PropDb, str]) -> PropDb:
    return prop_db[0]


@pytest.fixture(scope="module")
def pstore(prop_db: tuple[PropDb, str]) -> Iterator[EventStore]:
    s = Settings(
        pool_min_size=1,
        pool_max_size=4,
        retry_attempts=5,
        retry_timeout=20.0,
        application_name=APP_NAME,
    )
    with EventStore.open(prop_db[1], s) as store:
        yield store


# -- strategies ------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
#: "symbol" and "occurred_at" at the top of a payload are the event's symbol
#: and business time (validated as such: eventstore/codec.py); leave them out.
payloads = st.dictionaries(
    text.filter(lambda k: k not in {"symbol", "occurred_at"}), json_values, max_size=4
)
#: (stream index, events' payloads, append with the exact expected version?)
batches = st.lists(
    st.tuples(st.integers(0, 2), st.lists(payloads, min_size=1, max_size=5), st.booleans()),
    min_size=1,
    max_size=8,
)


def wait_all_visible(store: EventStore) -> None:
    """Transactions elsewhere in the cluster can hold readers back for a
    while (DESIGN.md §4: latency, not correctness)."""
    deadline = time.monotonic() + 60
    while store.status().events_behind_horizon and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.status().events_behind_horizon == 0, "a transaction held readers back for 60 s"


def append_batches(
    store: EventStore,
    streams: list[str],
    plan: list[tuple[int, list[dict[str, Any]], bool]],
    written: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Append the plan; ``written`` (updated and returned) is what each
    stream held before."""
    if written is None:
        written = {s: [] for s in streams}
    for index, datas, exact in plan:
        stream = streams[index]
        expected: Any = len(written[stream]) if exact else ANY
        result = store.append(
            stream, [NewEvent("Prop", d) for d in datas], expected_version=expected
        )
        assert result.first_version == len(written[stream]) + 1
        assert result.last_version == len(written[stream]) + len(datas)
        assert len(result.positions) == len(datas)
        written[stream].extend(datas)
    return written


# -- (a) versions contiguous, data intact ----------------------------------------


@settings(max_examples=60)
@given(plan=batches, from_version=st.integers(1, 6), limit=st.integers(1, 6))
def test_stream_versions_are_contiguous_and_streams_read_back_intact(
    pstore: EventStore,
    plan: list[tuple[int, list[dict[str, Any]], bool]],
    from_version: int,
    limit: int,
) -> None:
    run = uuid.uuid4().hex[:10]
    streams = [f"prop-{run}-{i}" for i in range(3)]
    written = append_batches(pstore, streams, plan)
    for stream, datas in written.items():
        events = pstore.read_stream(stream)
        assert [e.stream_version for e in events] == list(range(1, len(datas) + 1))
        assert [e.data for e in events] == datas
        assert all(e.stream_id == stream and e.type == "Prop" for e in events)
        assert pstore.stream_version(stream) == len(datas)
        window = pstore.read_stream(stream, from_version=from_version, limit=limit)
        assert window == events[from_version - 1 : from_version - 1 + limit]
        if datas:
            assert pstore.verify_chain(stream).ok


# -- (b) read_all pages ----------------------------------------------------------


def read_pages(
    store: EventStore, after: str | None, sizes: list[int], max_pages: int | None = None
) -> tuple[list[StoredEvent], str | None]:
    """Pages of the cycling sizes until an empty page (or max_pages)."""
    events: list[StoredEvent] = []
    pages = 0
    while max_pages is None or pages < max_pages:
        page = store.read_all(after=after, limit=sizes[pages % len(sizes)])
        pages += 1
        if not page:
            break
        assert len(page) <= sizes[(pages - 1) % len(sizes)]
        assert page[0].checkpoint != after, "read_all returned the checkpoint's own event"
        events.extend(page)
        after = page[-1].checkpoint
    return events, after


# No shrinking: every example grows the shared log, so shrinking a failure
# re-reads an ever longer log and can run for minutes; the unshrunk example
# (a few small batches) is readable as it is.
@settings(max_examples=40, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    first=batches,
    second=batches,
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    pages_between=st.integers(0, 5),
)
def test_read_all_in_any_page_sizes_yields_one_big_read(
    pstore: EventStore,
    first: list[tuple[int, list[dict[str, Any]], bool]],
    second: list[tuple[int, list[dict[str, Any]], bool]],
    sizes: list[int],
    pages_between: int,
) -> None:
    run = uuid.uuid4().hex[:10]
    streams = [f"page-{run}-{i}" for i in range(3)]
    # Start where earlier examples left the log, so each example pages only
    # through its own events (test_full_log_paged_from_the_start covers START).
    wait_all_visible(pstore)
    earlier = pstore.read_all(limit=100_000)
    start = earlier[-1].checkpoint if earlier else None
    written = append_batches(pstore, streams, first)
    wait_all_visible(pstore)
    paged, after = read_pages(pstore, start, sizes, pages_between)
    append_batches(pstore, streams, second, written)  # while the reader is mid-way
    wait_all_visible(pstore)
    rest, after = read_pages(pstore, after, sizes)
    paged += rest

    big = pstore.read_all(after=start, limit=100_000)
    assert pstore.read_all(limit=100_000) == earlier + big
    assert [e.event_id for e in paged] == [e.event_id for e in big]
    assert [e.checkpoint for e in paged] == [e.checkpoint for e in big]
    assert len({e.event_id for e in big}) == len(big)
    ours = [e for e in big if e.stream_id in streams]
    assert len(ours) == len(big) == sum(len(d) for _, d, _ in first + second)
    assert pstore.read_all(after=after, limit=20) == []
    # Resuming from any checkpoint yields exactly what follows it.
    for i in range(0, len(big), max(1, len(big) // 5)):
        nxt = pstore.read_all(after=big[i].checkpoint, limit=3)
        assert [e.event_id for e in nxt] == [e.event_id for e in big[i + 1 : i + 4]]


def test_full_log_paged_from_the_start_matches_one_big_read(pstore: EventStore) -> None:
    """After the property above, the whole log (every example's events) from
    START in small pages of varying size equals one big read."""
    stream = f"start-{uuid.uuid4().hex[:10]}"
    for i in range(30):
        pstore.append(stream, [NewEvent("Prop", {"i": i})] * (1 + i % 3))
    wait_all_visible(pstore)
    big = pstore.read_all(limit=100_000)
    for sizes in ([1000], [7], [1, 2, 3, 5, 8, 13, 20]):
        paged, _ = read_pages(pstore, None, sizes)
        assert [e.checkpoint for e in paged] == [e.checkpoint for e in big]
        assert paged == big


# -- (c) retries never duplicate ---------------------------------------------------

faults_plan = st.lists(st.sampled_from(["ok", "before", "after"]), max_size=6).filter(
    lambda p: sum(m != "ok" for m in p) <= 4  # retry_attempts=5: the call must succeed
)


@settings(max_examples=100)
@given(
    prior=st.integers(0, 2),
    size=st.integers(1, 4),
    with_key=st.booleans(),
    caller_ids=st.booleans(),
    exact=st.booleans(),
    plan=faults_plan,
)
def test_retries_never_duplicate(
    pstore: EventStore,
    db: PropDb,
    *,
    prior: int,
    size: int,
    with_key: bool,
    caller_ids: bool,
    exact: bool,
    plan: list[str],
) -> None:
    stream = f"retry-{uuid.uuid4().hex[:12]}"
    for i in range(prior):
        pstore.append(stream, [NewEvent("Before", {"i": i})])
    key = f"key-{stream}" if with_key else None
    ids = [uuid.uuid4() for _ in range(size)] if caller_ids else [None] * size
    batch = [NewEvent("Retried", {"i": i}, event_id=ids[i]) for i in range(size)]
    expected: Any = prior if exact else ANY

    injector = FaultInjector(APP_NAME)
    with stamina.set_testing(True, attempts=1000, cap=True), injector.active(*plan):
        result = pstore.append(stream, batch, expected_version=expected, idempotency_key=key)

    assert injector.fired() <= sum(m != "ok" for m in plan)
    if plan and plan[0] != "ok":
        assert injector.fired() >= 1, "the injector never fired: its statement marks are stale"
    assert result.duplicate is False
    assert (result.stream_id, result.first_version, result.last_version) == (
        stream,
        prior + 1,
        prior + size,
    )
    assert db.rows(stream) == prior + size
    stored = pstore.read_stream(stream, from_version=prior + 1)
    assert [e.data for e in stored] == [{"i": i} for i in range(size)]
    assert tuple(e.position for e in stored) == result.positions
    if caller_ids:
        assert [e.event_id for e in stored] == ids

    if key is not None:
        again = pstore.append(stream, batch, expected_version=expected, idempotency_key=key)
        assert again.duplicate is True
        assert (again.first_version, again.last_version, again.positions) == (
            result.first_version,
            result.last_version,
            result.positions,
        )
        assert db.rows(stream) == prior + size
