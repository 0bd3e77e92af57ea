"""Server restarts during appends (``pg_ctl restart -m fast`` and
``-m immediate``): every call succeeded exactly once or raised one of the
store's errors; nothing lost, nothing written twice, streams gap-free,
``verify`` ok, and a global reader that ran throughout saw every event
exactly once, in the log's one order."""

from __future__ import annotations

import time

from eventstore import EventStore

from .harness import (
    FAULT_SETTINGS,
    FIGURES,
    IMPATIENT_SETTINGS,
    FaultCluster,
    RecordProperty,
    Workload,
    check,
    log_count,
    wait_for_calls,
)

#: Writers through a store with the retries of FAULT_SETTINGS, and as many
#: through an impatient one (few retries: its failures reach the writers).
WRITERS = 3


def test_server_restarts_during_appends(
    fault_cluster: FaultCluster, fault_dsn: str, record_property: RecordProperty
) -> None:
    work = Workload(fault_dsn)
    started = time.monotonic()
    restarts: list[str] = []
    with (
        EventStore.open(fault_dsn, FAULT_SETTINGS) as store,
        EventStore.open(fault_dsn, IMPATIENT_SETTINGS) as impatient,
        EventStore.open(fault_dsn, FAULT_SETTINGS) as reader_store,
    ):
        work.start_reader(reader_store)
        work.start_writers(store, WRITERS)
        work.start_writers(impatient, WRITERS, first=WRITERS)
        for mode in ("fast", "immediate", "fast", "immediate"):
            wait_for_calls(work, 150)
            fault_cluster.restart(mode)
            restarts.append(mode)
        wait_for_calls(work, 150)  # the store goes on after the last one
        work.stop_writers()
        work.drain_reader(log_count(fault_dsn))
        work.join()
    outcome = check(work, fault_dsn)
    line = f"restarts ({', '.join(restarts)}): {outcome.line()}; {time.monotonic() - started:.1f} s"
    FIGURES.append(line)
    record_property("figures", line)
    assert not work.crashes, work.crashes
    assert outcome.ok > 0
    assert not outcome.problems(), outcome.problems()
