"""Property test of the direct writer's retries (hypothesis): whatever
transient failures hit an append (before or after its statement, on any
attempt), it is stored once and its result describes what is stored.

The log's own properties (gap-free versions, read_all paging) are in the
contract suite, tests/contract/test_properties.py, run against every writer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stamina
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import ANY, EventStore, NewEvent, Settings
from tests.support.database import event_rows
from tests.support.faults import FaultInjector

APP_NAME = f"utcp-props-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def pstore(writer_dsn: str) -> Iterator[EventStore]:
    s = Settings(
        pool_min_size=1,
        pool_max_size=4,
        retry_attempts=5,
        retry_timeout=20.0,
        application_name=APP_NAME,
    )
    with EventStore.open(writer_dsn, s) as store:
        yield store


# -- retries never duplicate ---------------------------------------------------

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
    database_dsn: str,
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
    assert event_rows(database_dsn, stream_ids=[stream]) == prior + size
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
        assert event_rows(database_dsn, stream_ids=[stream]) == prior + size
