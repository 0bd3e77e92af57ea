"""Backend kills during appends and during projection batches:
``pg_terminate_backend`` on random backends of the store and of the
projection worker, in a loop. The same checks as for restarts, plus: the
projection, after a final catch-up, equals a rebuild from the log
(``eventstore project rebuild --json`` reports no differences)."""

from __future__ import annotations

import time

from eventstore import EventStore

from .harness import (
    FAULT_SETTINGS,
    FIGURES,
    IMPATIENT_SETTINGS,
    FaultCluster,
    Killer,
    RecordProperty,
    Workload,
    check,
    log_count,
    rebuild_report,
)

WRITERS = 3
#: Seconds of kills.
KILLING = 15.0


def test_backend_kills_during_appends_and_projection_batches(
    fault_cluster: FaultCluster, fault_dsn: str, record_property: RecordProperty
) -> None:
    work = Workload(fault_dsn)
    killer = Killer(fault_cluster, fault_dsn.rsplit("/", 1)[1], interval=(0.02, 0.15))
    started = time.monotonic()
    with (
        EventStore.open(fault_dsn, FAULT_SETTINGS) as store,
        EventStore.open(fault_dsn, IMPATIENT_SETTINGS) as impatient,
        EventStore.open(fault_dsn, FAULT_SETTINGS) as reader_store,
        EventStore.open(fault_dsn, FAULT_SETTINGS) as worker_store,
    ):
        work.start_reader(reader_store)
        work.start_worker(worker_store)
        work.start_writers(store, WRITERS)
        work.start_writers(impatient, WRITERS, first=WRITERS)
        killer.start()
        killer.stop.wait(KILLING)
        killer.finish()
        work.stop_writers()
        work.drain_reader(log_count(fault_dsn))
        work.worker_stop.set()
        work.join()
    outcome = check(work, fault_dsn)
    rebuilt, rebuild_detail = rebuild_report(fault_dsn)
    kills = ", ".join(f"{k} {v}" for k, v in sorted(killer.kills.items()))
    restarts = sum(work.worker_restarts.values())
    line = (
        f"kills ({kills}; worker restarted {restarts} times): {outcome.line()}; "
        f"rebuild {'ok' if rebuilt else 'DIFFERS'} ({rebuild_detail}); "
        f"{time.monotonic() - started:.1f} s"
    )
    FIGURES.append(line)
    record_property("figures", line)
    assert not work.crashes, work.crashes
    assert not work.worker_failures, work.worker_failures
    assert killer.kills["store"] > 0 and killer.kills["worker in a batch"] > 0, killer.kills
    assert not outcome.problems(), outcome.problems()
    assert rebuilt, rebuild_detail
