"""The fault tests' machinery: a private cluster that can be restarted,
stopped and have its backends killed, writers that record every call's
outcome, a global reader, a projection worker under a supervisor, and the
checks every fault test ends with (lost, duplicated, gaps, reader misses,
verify, rebuild).

Everything goes through the library's public API (EventStore,
ProjectionRunner) or the ``eventstore`` command, as a user would.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import psycopg

from eventstore import (
    DuplicateEventId,
    EventStore,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    NewEvent,
    Settings,
    ValidationError,
    WrongExpectedVersion,
)
from projections import ProjectionError, ProjectionRunner
from storectl.drill import PG_BIN, Cluster, run
from trading.events import CashDeposited, PortfolioOpened, Trade

#: Every wait of the fault tests is bounded by this (seconds).
WAIT: Final = 60.0
#: How long a writer keeps repeating a keyed call that failed (seconds).
KEYED_DEADLINE: Final = 60.0

#: The store's settings under faults: enough retries to ride out a fast
#: restart most of the time, and short waits so that calls end.
FAULT_SETTINGS: Final = Settings(
    pool_min_size=2,
    pool_max_size=12,
    acquire_timeout=5.0,
    connect_timeout=2.0,
    retry_attempts=8,
    retry_timeout=10.0,
)

#: Settings of an impatient caller: few retries, so that failures reach
#: the writers (keyed calls are then repeated by the writer, calls without
#: a key are reported as raised).
IMPATIENT_SETTINGS: Final = Settings(
    pool_min_size=1,
    pool_max_size=6,
    acquire_timeout=2.0,
    connect_timeout=1.0,
    retry_attempts=2,
    retry_timeout=1.0,
)

#: The store's errors that say "this request itself is refused": a keyed
#: call is repeated after any other of the store's errors (a storage error,
#: or an outcome the store could not know).
NOT_REPEATABLE: Final = (
    ValidationError,
    IdempotencyConflict,
    DuplicateEventId,
    WrongExpectedVersion,
    IntegrityViolation,
    LogOrderHazard,
)

#: pytest's ``record_property`` fixture.
RecordProperty = Callable[[str, object], None]

#: Figures of each fault test, printed in pytest's terminal summary
#: (tests/faults/conftest.py), whatever the capture mode.
FIGURES: list[str] = []


class FaultCluster(Cluster):
    """A private cluster of the fault tests (storectl.drill.Cluster: initdb in a
    temporary directory, its own port, run as the postgres OS user when
    running as root), which can also be restarted."""

    @property
    def log(self) -> str:
        return str(self.tmp / f"{self.name}.log")

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m MODE`` (fast or immediate), waiting until it
        accepts connections again."""
        run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                self.log,
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "restart",
            ],
            as_postgres=True,
            quiet=True,
        )


def eventstore_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storectl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_count(dsn: str) -> int:
    """The number of events in the log."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
    return int(row[0]) if row else 0


def wait_for_calls(work: Workload, more: int) -> None:
    """Bounded wait until ``more`` further calls have been made."""
    target = len(work.calls) + more
    deadline = time.monotonic() + 30
    while len(work.calls) < target and time.monotonic() < deadline:
        time.sleep(0.02)


# -- calls and their outcomes -------------------------------------------------------


@dataclass
class Call:
    """One append call as the caller saw it."""

    writer: int
    seq: int
    key: str | None
    event_ids: list[uuid.UUID]
    #: "ok" (returned), "raised" (a no-key call that raised one of the
    #: store's errors: outcome unknown), "failed" (a keyed call that never
    #: succeeded, or an error that is not the store's own)
    outcome: str = "pending"
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Workload:
    """Writers, a global reader and (optionally) a projection worker, all
    recording what they saw."""

    dsn: str
    settings: Settings = FAULT_SETTINGS
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    stop: threading.Event = field(default_factory=threading.Event)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reader_seen: list[uuid.UUID] = field(default_factory=list)
    reader_errors: Counter[str] = field(default_factory=Counter)
    reader_stop: threading.Event = field(default_factory=threading.Event)
    worker_restarts: Counter[str] = field(default_factory=Counter)
    worker_failures: list[str] = field(default_factory=list)
    worker_stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    # -- writers --------------------------------------------------------------

    def start_writers(
        self, store: EventStore, count: int, max_calls: int | None = None, first: int = 0
    ) -> None:
        for n in range(first, first + count):
            self._thread(f"writer-{n}", functools.partial(self._writer, store, n, max_calls))

    def stop_writers(self, timeout: float = 90) -> None:
        self.stop.set()
        for t in self.threads:
            if t.name.startswith("writer"):
                t.join(timeout)

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # a bug of the harness or the library
                self.crashes.append(f"{name}: {type(exc).__name__}: {exc}")

        t = threading.Thread(target=guarded, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def _writer(self, store: EventStore, n: int, max_calls: int | None) -> None:
        portfolio = f"f{self.run_id}-{n}"
        stream = f"portfolio-{portfolio}"
        now = dt.datetime.now(dt.UTC)
        opened = PortfolioOpened(
            portfolio_id=portfolio, name=f"fault {n}", base_currency="USD", opened_at=now
        )
        if self.call(store, n, -1, stream, [opened], keyed=True).outcome != "ok":
            return  # recorded as failed; nothing after it would project
        i = 0
        while not self.stop.is_set() and (max_calls is None or i < max_calls):
            at = dt.datetime.now(dt.UTC)
            payloads: list[Any]
            if i % 5 == 0:
                payloads = [
                    CashDeposited(
                        deposit_id=f"{portfolio}-d{i}",
                        portfolio_id=portfolio,
                        amount=Decimal(1000),
                        occurred_at=at,
                    )
                ]
            else:
                # one or two trades in one append (a batch is all or nothing)
                payloads = [
                    Trade(
                        trade_id=f"{portfolio}-t{i}-{j}",
                        portfolio_id=portfolio,
                        symbol=("AAPL", "MSFT", "BTC-USD")[(i + j) % 3],
                        side="buy" if (i + j) % 3 else "sell",
                        quantity=Decimal(1 + (i % 4)),
                        price=Decimal(100) + Decimal(i % 7),
                        fees=Decimal("0.5"),
                        executed_at=at,
                    )
                    for j in range(1 + i % 2)
                ]
            # Two calls in three carry an idempotency key; the third does not.
            self.call(store, n, i, stream, payloads, keyed=i % 3 != 2)
            i += 1

    def call(
        self, store: EventStore, n: int, seq: int, stream: str, payloads: list[Any], *, keyed: bool
    ) -> Call:
        """One append; a keyed call that fails with a storage error is
        repeated (same key, same events) until it succeeds or KEYED_DEADLINE
        passes (unless the error refuses the request itself); a call without
        a key is never repeated."""
        name = f"{self.run_id}:{n}:{seq}"
        events = [
            NewEvent(type(p).EVENT_TYPE, p, {"call": name, "n": j}, uuid.uuid4())
            for j, p in enumerate(payloads)
        ]
        key = f"fault:{name}" if keyed else None
        record = Call(n, seq, key, [e.event_id for e in events if e.event_id is not None])
        with self.lock:
            self.calls.append(record)
        deadline = time.monotonic() + KEYED_DEADLINE
        while True:
            record.attempts += 1
            try:
                store.append(stream, events, idempotency_key=key)
                record.outcome = "ok"
                return record
            except EventStoreError as exc:
                record.errors.append(f"{type(exc).__name__}: {exc.message[:120]}")
                if key is None:
                    record.outcome = "raised"
                    return record
                if isinstance(exc, NOT_REPEATABLE) or time.monotonic() > deadline:
                    record.outcome = "failed"
                    return record
                time.sleep(0.05)
            except Exception as exc:  # not one of the store's errors: a bug
                record.errors.append(f"NOT THE STORE'S OWN: {type(exc).__name__}: {exc}")
                record.outcome = "failed"
                return record

    # -- the global reader -------------------------------------------------------

    def start_reader(self, store: EventStore) -> None:
        self._thread("reader", lambda: self._reader(store))

    def _reader(self, store: EventStore) -> None:
        checkpoint: str | None = None
        while not self.reader_stop.is_set():
            try:
                page = store.read_all(after=checkpoint, limit=500)
            except EventStoreError as exc:
                self.reader_errors[type(exc).__name__] += 1
                self.reader_stop.wait(0.1)
                continue
            if page:
                self.reader_seen.extend(e.event_id for e in page)
                checkpoint = page[-1].checkpoint
            else:
                self.reader_stop.wait(0.02)

    def drain_reader(self, total: int) -> None:
        """Wait (bounded) until the reader has seen ``total`` events, then stop it."""
        deadline = time.monotonic() + WAIT
        while len(self.reader_seen) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        self.reader_stop.set()

    # -- the projection worker ---------------------------------------------------

    def start_worker(self, store: EventStore) -> None:
        self._thread("worker", lambda: self._worker(store))

    def _worker(self, store: EventStore) -> None:
        """ProjectionRunner.run under a supervisor that starts it again
        when its connection dies (as systemd would restart `project run`).
        A ProjectionError (an event it cannot apply) is a failure."""
        while not self.worker_stop.is_set():
            runner = ProjectionRunner(store, self.dsn, poll_interval=0.2, batch_size=200)
            try:
                runner.run(self.worker_stop)
            except ProjectionError as exc:
                self.worker_failures.append(str(exc))
                return
            except Exception as exc:
                self.worker_restarts[type(exc).__name__] += 1
                self.worker_stop.wait(0.1)

    def join(self, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            self.crashes.append(f"threads still running after {timeout:g} s: {alive}")


# -- backend kills ---------------------------------------------------------------


@dataclass
class Killer:
    """pg_terminate_backend on random backends of the store and the worker
    in one database, every few tens of milliseconds (``interval``), from an
    admin session of its own."""

    cluster: Cluster
    dbname: str
    stop: threading.Event = field(default_factory=threading.Event)
    kills: Counter[str] = field(default_factory=Counter)
    thread: threading.Thread | None = None
    interval: tuple[float, float] = (0.05, 0.3)

    QUERY: Final = (
        "SELECT pid, application_name, state FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' AND application_name LIKE 'eventstore%%'"
    )

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="killer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        rng = random.Random()
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.wait(rng.uniform(*self.interval)):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.cluster.dsn("postgres"), autocommit=True, connect_timeout=5
                    )
                rows = conn.execute(self.QUERY, (self.dbname,)).fetchall()
                if not rows:
                    continue
                # Every other kill aims at the projection worker when it is
                # busy (inside a batch), so that batches are hit too.
                busy = [
                    r for r in rows if r[1].startswith("eventstore-projection") and r[2] != "idle"
                ]
                pid, app, state = (
                    rng.choice(busy) if busy and rng.random() < 0.5 else rng.choice(rows)
                )
                if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                    if not app.startswith("eventstore-projection"):
                        self.kills["store"] += 1
                    elif state == "idle":
                        self.kills["worker idle"] += 1
                    else:
                        self.kills["worker in a batch"] += 1
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(WAIT)


# -- the checks ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What the log holds against what the callers were told."""

    calls: int = 0
    ok: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: list[str] = field(default_factory=list)
    unknown_raised: int = 0
    unknown_written: int = 0
    gaps: list[str] = field(default_factory=list)
    reader_seen: int = 0
    reader_missed: int = 0
    reader_duplicated: int = 0
    reader_order_ok: bool = False
    verify_ok: bool = False
    verify_detail: str = ""
    errors_seen: Counter[str] = field(default_factory=Counter)

    def problems(self) -> list[str]:
        out = [*self.failed[:5]]
        if self.lost:
            out.append(f"{self.lost} events of successful calls lost")
        if self.duplicated:
            out.append(f"{self.duplicated} payloads written twice")
        out += self.gaps[:5]
        if self.reader_missed or self.reader_duplicated or not self.reader_order_ok:
            out.append(
                f"global reader: {self.reader_missed} missed, {self.reader_duplicated} twice, "
                f"order {'ok' if self.reader_order_ok else 'DIFFERS'}"
            )
        if not self.verify_ok:
            out.append(f"verify: {self.verify_detail}")
        return out

    def line(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_seen.items())) or "none"
        return (
            f"calls {self.calls} (ok {self.ok}), events {self.events}, lost {self.lost}, "
            f"duplicated {self.duplicated}, failed {len(self.failed)}, "
            f"no-key calls that raised {self.unknown_raised} (of which written "
            f"{self.unknown_written}), reader saw {self.reader_seen} missed "
            f"{self.reader_missed} twice {self.reader_duplicated} order "
            f"{'ok' if self.reader_order_ok else 'DIFFERS'}, verify "
            f"{'ok' if self.verify_ok else 'FAILED'}, errors seen: {errors}"
        )


LOG_QUERY: Final = (
    "SELECT event_id, stream_id, stream_version, metadata->>'call', metadata->>'n'"
    " FROM utcp.stored_events WHERE metadata ? 'call'"
)


def check(work: Workload, dsn: str) -> Outcome:
    """Compare the log (read directly, and by a fresh read_all from the
    start) with the callers' outcomes and the global reader's sequence."""
    out = Outcome(calls=len(work.calls))
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(LOG_QUERY).fetchall()
        gaps = conn.execute(
            "SELECT stream_id, count(*), min(stream_version), max(stream_version),"
            " count(DISTINCT stream_version) FROM utcp.stored_events GROUP BY stream_id"
            " HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)"
            " OR count(DISTINCT stream_version) <> count(*)"
        ).fetchall()
        total = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
    out.gaps = [f"stream {g[0]}: {g[1]} events, versions {g[2]}..{g[3]}" for g in gaps]
    in_log = Counter(r[0] for r in rows)
    payloads = Counter((r[3], r[4]) for r in rows)
    out.events = len(rows)
    out.duplicated = sum(c - 1 for c in in_log.values() if c > 1) + sum(
        c - 1 for c in payloads.values() if c > 1
    )
    for call in work.calls:
        for error in call.errors:
            out.errors_seen[error.split(":", 1)[0]] += 1
        if call.outcome == "ok":
            out.ok += 1
            out.lost += sum(1 for i in call.event_ids if i not in in_log)
        elif call.outcome == "raised":
            out.unknown_raised += 1
            out.unknown_written += int(any(i in in_log for i in call.event_ids))
        else:
            out.failed.append(f"call {call.key or call.seq} {call.outcome}: {call.errors[-3:]}")
    # The reader against a fresh read of the whole log.
    with EventStore.open(dsn, FAULT_SETTINGS) as store:
        everything: list[uuid.UUID] = []
        checkpoint: str | None = None
        while page := store.read_all(after=checkpoint, limit=1000):
            everything.extend(e.event_id for e in page)
            checkpoint = page[-1].checkpoint
    seen = work.reader_seen
    out.reader_seen = len(seen)
    out.reader_duplicated = len(seen) - len(set(seen))
    out.reader_missed = len(set(everything) - set(seen))
    out.reader_order_ok = seen == everything and total is not None and len(seen) == total[0]
    verify = eventstore_cli("verify", "--json", "--dsn", dsn)
    out.verify_ok = verify.returncode == 0
    try:
        # JSON lines: one per problem, then the summary.
        report = json.loads(verify.stdout.strip().splitlines()[-1])
        out.verify_detail = (
            f"{report['events_checked']} events, {report['streams_checked']} streams, "
            f"{report['anchors_checked']} anchors, {report['problems']} problems"
        )
    except (ValueError, KeyError, IndexError):
        out.verify_detail = (verify.stdout + verify.stderr).strip()[:300]
    return out


def rebuild_report(dsn: str) -> tuple[bool, str]:
    """A final catch-up, then ``eventstore project rebuild --json``: True
    when the rebuild found no differences with the live tables."""
    caught = eventstore_cli("project", "catch-up", "--wait", "--dsn", dsn)
    if caught.returncode != 0:
        return False, f"catch-up exited {caught.returncode}: {caught.stderr.strip()[:300]}"
    rebuilt = eventstore_cli("project", "rebuild", "--json", "--dsn", dsn)
    lines = rebuilt.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        return False, f"rebuild exited {rebuilt.returncode}: {rebuilt.stderr.strip()[:300]}"
    ok = rebuilt.returncode == 0 and report.get("ok") is True
    return ok, f"{report.get('events')} events, {len(report.get('differences', []))} differences"
