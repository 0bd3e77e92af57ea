"""An outage longer than the retry budget: the server is stopped for
longer than ``retry_timeout`` (3 s here). Calls made meanwhile end with one
of the store's errors, saying the storage is unavailable, within about
the budget; once the server is back, the same store (not reopened)
recovers, and a keyed call repeated after the outage is in the log once."""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any

from eventstore import EventStore, EventStoreError, NewEvent, Settings

from .harness import FIGURES, FaultCluster, RecordProperty, log_count

BUDGET = 3.0
#: What a call may take beyond the budget: one attempt started just before
#: the budget ran out may still be connecting (connect_timeout).
SLACK = 2.0
#: What the error of a call made during the outage says (type name or message).
UNAVAILABLE = r"unavailable|connect|unknown|outcome"
SETTINGS = Settings(
    pool_min_size=2,
    pool_max_size=6,
    retry_attempts=1000,  # the time budget is what ends the retries
    retry_timeout=BUDGET,
    connect_timeout=1.0,
)


def probe(stream: str, event_id: uuid.UUID | None = None) -> list[NewEvent]:
    event_id = event_id or uuid.uuid4()
    return [NewEvent("FaultProbe", {"probe": uuid.uuid4().hex}, {"call": stream}, event_id)]


def test_an_outage_longer_than_the_retry_budget(
    fault_cluster: FaultCluster, fault_dsn: str, record_property: RecordProperty
) -> None:
    stream = f"outage-{uuid.uuid4().hex[:8]}"
    keyed_id = uuid.uuid4()
    keyed = probe(stream, keyed_id)
    with EventStore.open(fault_dsn, SETTINGS) as store:
        store.append(stream, probe(stream))  # warm: the pool is connected
        head = store.read_all(limit=1000)[-1].checkpoint
        calls: dict[str, Any] = {
            "append with a key": lambda: store.append(stream, keyed, idempotency_key=stream),
            "append without a key": lambda: store.append(stream, probe(stream)),
            "read_all": lambda: store.read_all(after=head),
            "read_stream": lambda: store.read_stream(stream),
        }
        results: dict[str, tuple[float, BaseException | None]] = {}

        def timed(name: str) -> None:
            started = time.monotonic()
            try:
                calls[name]()
                results[name] = (time.monotonic() - started, None)
            except BaseException as exc:
                results[name] = (time.monotonic() - started, exc)

        fault_cluster.stop("fast")
        down = time.monotonic()
        try:
            threads = [threading.Thread(target=timed, args=(n,)) for n in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            # The outage lasts longer than the budget, whatever the calls took.
            time.sleep(max(0.0, BUDGET * 1.5 - (time.monotonic() - down)))
        finally:
            fault_cluster.start()
        outage = time.monotonic() - down
        # The same store recovers: bounded attempts, no reopening.
        recovered_after = None
        deadline = time.monotonic() + 30
        while recovered_after is None:
            try:
                store.append(stream, keyed, idempotency_key=stream)
                recovered_after = time.monotonic() - down - outage
            except EventStoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        after = [store.append(stream, probe(stream)) for _ in range(5)]
        read_back = store.read_stream(stream)
    figures = ", ".join(
        f"{name} {seconds:.1f} s {type(exc).__name__ if exc else 'returned'}"
        for name, (seconds, exc) in results.items()
    )
    line = (
        f"outage {outage:.1f} s (retry_timeout {BUDGET:g} s): {figures}; "
        f"recovered {recovered_after:.1f} s after the restart, without reopening"
    )
    FIGURES.append(line)
    record_property("figures", line)
    assert set(results) == set(calls), "a call did not end within 60 s"
    for name, (seconds, exc) in results.items():
        # StorageUnavailable today; an outcome-unknown error of the store's
        # own may come for appends: either, saying why.
        assert isinstance(exc, EventStoreError), f"{name}: {exc!r}"
        assert re.search(UNAVAILABLE, f"{type(exc).__name__} {exc}", re.IGNORECASE), repr(exc)
        assert seconds <= BUDGET + SLACK, (
            f"{name} took {seconds:.1f} s with retry_timeout={BUDGET:g} s: {exc}"
        )
    assert all(not r.duplicate for r in after)
    ids = [e.event_id for e in read_back]
    assert ids.count(keyed_id) == 1
    assert log_count(fault_dsn) == len(read_back)
