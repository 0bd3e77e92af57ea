"""The bounded soak: eight writers, the projection worker, a global
reader and random backend kills, for FAULTS_SOAK_SECONDS (default 75 s).
It runs in the normal suite and in CI (select it alone with ``-m soak``;
``FAULTS_SOAK_SECONDS=600`` makes it longer). Its figures - calls, events,
rate, lost, duplicated, reader misses, verify and rebuild - are printed in
the terminal summary. Zero lost, zero duplicated, zero missed."""

from __future__ import annotations

import os
import time

import pytest

from eventstore import EventStore

from .harness import (
    FAULT_SETTINGS,
    FIGURES,
    FaultCluster,
    Killer,
    RecordProperty,
    Workload,
    check,
    log_count,
    rebuild_report,
)

WRITERS = 8
SECONDS = float(os.environ.get("FAULTS_SOAK_SECONDS", "75"))


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 240)  # a longer soak gets a longer limit
def test_soak(fault_cluster: FaultCluster, fault_dsn: str, record_property: RecordProperty) -> None:
    work = Workload(fault_dsn)
    killer = Killer(fault_cluster, fault_dsn.rsplit("/", 1)[1], interval=(0.1, 0.5))
    with (
        EventStore.open(fault_dsn, FAULT_SETTINGS) as store,
        EventStore.open(fault_dsn, FAULT_SETTINGS) as reader_store,
        EventStore.open(fault_dsn, FAULT_SETTINGS) as worker_store,
    ):
        work.start_reader(reader_store)
        work.start_worker(worker_store)
        started = time.monotonic()
        work.start_writers(store, WRITERS)
        killer.start()
        killer.stop.wait(SECONDS)
        killer.finish()
        work.stop_writers()
        elapsed = time.monotonic() - started
        work.drain_reader(log_count(fault_dsn))
        work.worker_stop.set()
        work.join()
    outcome = check(work, fault_dsn)
    rebuilt, rebuild_detail = rebuild_report(fault_dsn)
    kills = ", ".join(f"{k} {v}" for k, v in sorted(killer.kills.items()))
    line = (
        f"soak {elapsed:.0f} s, {WRITERS} writers + worker + reader, kills ({kills}; worker "
        f"restarted {sum(work.worker_restarts.values())} times): {outcome.line()}; "
        f"rate {outcome.ok / elapsed:.0f} calls/s, {outcome.events / elapsed:.0f} events/s; "
        f"rebuild {'ok' if rebuilt else 'DIFFERS'} ({rebuild_detail})"
    )
    FIGURES.append(line)
    record_property("figures", line)
    assert not work.crashes, work.crashes
    assert not work.worker_failures, work.worker_failures
    assert sum(killer.kills.values()) > 0, "no backend was killed"
    assert not outcome.problems(), outcome.problems()
    assert rebuilt, rebuild_detail
