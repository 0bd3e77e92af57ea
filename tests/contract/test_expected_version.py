"""Optimistic concurrency per stream (docs/design.md §2, invariant 3): every form
of ``expected_version``, a refused one writing nothing, and writers racing
for one stream's next version — exactly one wins each."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventStore,
    NewEvent,
    ValidationError,
    WrongExpectedVersion,
)
from tests.contract.conftest import Writer
from tests.support.database import log_counts as counts
from tests.support.threads import run_threads


def test_expected_version_any(writer: Writer, store: EventStore, stream: str) -> None:
    assert writer.append(stream, [NewEvent("A", {})], expected_version=ANY).last_version == 1
    assert writer.append(stream, [NewEvent("A", {})]).last_version == 2  # ANY is the default
    assert writer.append(stream, [NewEvent("A", {})], expected_version=ANY).first_version == 3


def test_expected_version_no_stream(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    result = writer.append(stream, [NewEvent("A", {})], expected_version=NO_STREAM)
    assert (result.first_version, result.last_version) == (1, 1)
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        writer.append(stream, [NewEvent("A", {})], expected_version=NO_STREAM)
    assert info.value.expected is NO_STREAM
    assert info.value.actual == 1
    assert info.value.stream_id == stream
    assert counts(admin) == before
    assert store.stream_version(stream) == 1


def test_expected_version_zero_is_no_stream(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    assert writer.append(stream, [NewEvent("A", {})], expected_version=0).last_version == 1
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        writer.append(stream, [NewEvent("A", {})], expected_version=0)
    assert info.value.expected == 0
    assert info.value.actual == 1
    assert counts(admin) == before


def test_expected_version_stream_exists(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    before = counts(admin)
    with pytest.raises(WrongExpectedVersion) as info:
        writer.append(stream, [NewEvent("A", {})], expected_version=STREAM_EXISTS)
    assert info.value.expected is STREAM_EXISTS
    assert info.value.actual == 0
    assert counts(admin) == before
    assert store.stream_version(stream) == 0
    writer.append(stream, [NewEvent("A", {})])
    result = writer.append(stream, [NewEvent("B", {})], expected_version=STREAM_EXISTS)
    assert (result.first_version, result.last_version) == (2, 2)


def test_expected_version_int(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any]
) -> None:
    writer.append(stream, [NewEvent("A", {}), NewEvent("A", {})], expected_version=0)
    result = writer.append(stream, [NewEvent("B", {}), NewEvent("B", {})], expected_version=2)
    assert (result.first_version, result.last_version) == (3, 4)
    before = counts(admin)
    for wrong in (0, 1, 2, 3, 5, 100):
        with pytest.raises(WrongExpectedVersion) as info:
            writer.append(stream, [NewEvent("C", {})], expected_version=wrong)
        assert info.value.expected == wrong
        assert info.value.actual == 4
        assert info.value.stream_id == stream
        assert "4" in str(info.value)
    with pytest.raises(WrongExpectedVersion) as info:
        writer.append(f"{stream}-new", [NewEvent("C", {})], expected_version=3)
    assert (info.value.expected, info.value.actual) == (3, 0)
    assert counts(admin) == before
    assert writer.append(stream, [NewEvent("C", {})], expected_version=4).last_version == 5


@pytest.mark.parametrize("bad", [-1, -2, True, False, "1", 1.0, None, "ANY"])
def test_invalid_expected_version_is_refused(
    writer: Writer, store: EventStore, stream: str, admin: psycopg.Connection[Any], bad: Any
) -> None:
    before = counts(admin)
    with pytest.raises(ValidationError) as info:
        writer.append(stream, [NewEvent("A", {})], expected_version=bad)
    assert info.value.field == "expected_version"
    assert counts(admin) == before
    assert store.stream_version(stream) == 0


def test_concurrent_expected_version_writers_exactly_one_wins_per_version(
    writer: Writer,
    store: EventStore,
) -> None:
    stream = f"race-{uuid.uuid4().hex[:10]}"
    threads, rounds = 6, 20
    barrier = threading.Barrier(threads)
    outcomes: list[list[Any]] = [[None] * threads for _ in range(rounds)]

    def contender(t: int) -> None:
        for r in range(rounds):
            barrier.wait(timeout=60)
            try:
                outcomes[r][t] = writer.append(
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
