"""Group commit's cost and gain, measured: the store with group commit on,
off (each append a group of one of utcp.append_group()), and through the
old utcp.append_events() path, beside raw single-row INSERTs.

    python -m bench.group_commit                 # about 2-3 minutes on 2 cores
    python -m bench.group_commit --rounds 3 --scale 0.3   # a quick look

Cases: ``lone`` (one writer, one event per append: must not be slower with
group commit on), ``8w`` (8 writer threads, one event per append, a
stream each), ``8w-100`` (8 threads, 100 events per append). Modes run in
turns within each round (the machine is shared and noisy: compare medians).
Per case and mode: events/s, per-call latency (median and p99, ms), the
writer threads' CPU time per append (µs; with group commit a leader's
includes sending its followers' requests) and, with group commit, the mean
group size.

The benchmark creates its own database (``utcp_groupbench_<pid>``, on the
server of ``--dsn``/``$EVENTSTORE_TEST_DSN``, default the local one),
deploys the schema with ``python -m storectl db deploy``, and drops it at
the end. The raw side inserts into a copy of utcp.stored_events (``LIKE
... INCLUDING ALL``, no triggers), one autocommit connection per thread.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore import EventStore, NewEvent, Settings
from eventstore.events import uuid7

DEFAULT_ADMIN_DSN: Final = "postgresql://root@127.0.0.1:5432/postgres"
THREADS: Final = 8
MODES: Final = ("raw", "append_events", "alone", "groups")
CASES: Final = {
    # case: (threads, events per append, appends per thread at scale 1)
    "lone": (1, 1, 1500),
    "8w": (THREADS, 1, 400),
    "8w-100": (THREADS, 100, 12),
}
RAW_INSERT: Final = """
INSERT INTO bench.raw_events (event_id, stream_id, stream_version, type, data, metadata,
                              symbol, occurred_at, created_at, prev_hash, hash)
VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now(), %s, %s)"""
RAW_INSERT_MANY: Final = """
INSERT INTO bench.raw_events (event_id, stream_id, stream_version, type, data, metadata,
                              symbol, occurred_at, created_at, prev_hash, hash)
SELECT u.id, %s, u.v, %s, u.d, u.m, u.s, now(), now(), u.p, u.h
  FROM unnest(%s::uuid[], %s::int8[], %s::jsonb[], %s::jsonb[], %s::text[], %s::bytea[],
              %s::bytea[]) AS u(id, v, d, m, s, p, h)"""
METADATA: Final = {"actor": "trading-assistant", "session": "bench"}
_encode = msgspec.json.Encoder().encode


def payload(n: int) -> dict[str, Any]:
    return {
        "trade_id": f"t-{n}",
        "symbol": "ACME",
        "side": "buy",
        "quantity": "12.5",
        "price": "101.25",
        "fee": "0.10",
        "currency": "USD",
        "occurred_at": "2026-12-02T10:00:00Z",
    }


@dataclass
class Sample:
    events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    group_size: float | None = None
    #: the writer threads' CPU time per append (µs): the client's cost
    cpu_per_append: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class RawWriter:
    """One stream by raw psycopg: versions and a sha256 chain client-side."""

    def __init__(self, conn: psycopg.Connection[Any], stream: str) -> None:
        self.conn, self.stream, self.version, self.head = conn, stream, 0, b""

    def row(self, n: int) -> tuple[Any, ...]:
        data = _encode(payload(n))
        prev = self.head or None
        self.head = hashlib.sha256(self.head + data).digest()
        self.version += 1
        return (uuid7(), self.version, data.decode(), _encode(METADATA).decode(), "ACME", prev)

    def append(self, count: int) -> None:
        rows = [(*self.row(i), self.head) for i in range(count)]
        if count == 1:
            eid, v, d, m, s, p, h = rows[0]
            self.conn.execute(RAW_INSERT, (eid, self.stream, v, "Tick", d, m, s, p, h))
            return
        cols = list(zip(*rows, strict=True))
        self.conn.execute(
            RAW_INSERT_MANY,
            (self.stream, "Tick", *(list(c) for c in cols)),
        )


def run_case(mode: str, case: str, scale: float, dsn: str, stores: dict[str, EventStore]) -> Sample:
    threads, per_append, appends = CASES[case]
    appends = max(1, round(appends * scale))
    run = uuid.uuid4().hex[:8]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    cpu = [0.0] * threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    if mode == "raw":
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]

        def work(t: int) -> Callable[[int], None]:
            writer = RawWriter(conns[t], f"raw-{run}-{t}")
            return lambda n: writer.append(per_append)
    else:
        store = stores[mode]
        conns = []

        def work(t: int) -> Callable[[int], None]:
            stream = f"{mode}-{run}-{t}"
            return lambda n: store.append(
                stream, [NewEvent("Tick", payload(n + i)) for i in range(per_append)]
            )

    def thread(t: int) -> None:
        try:
            do = work(t)
            own = latencies[t]
            barrier.wait()
            cpu_start = time.thread_time()
            for n in range(appends):
                start = time.perf_counter()
                do(n)
                own.append(time.perf_counter() - start)
            cpu[t] = time.thread_time() - cpu_start
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    committer = stores["groups"]._writer.groups if mode == "groups" else None
    before = (committer.groups, committer.requests) if committer else (0, 0)
    workers = [threading.Thread(target=thread, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    sample = Sample(threads * appends * per_append, seconds, [x for t in latencies for x in t])
    sample.cpu_per_append = sum(cpu) / (threads * appends) * 1e6
    if committer is not None:
        groups = committer.groups - before[0]
        sample.group_size = (committer.requests - before[1]) / groups if groups else None
    return sample


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("EVENTSTORE_TEST_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the appends")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    cases = args.cases.split(",")

    name = f"utcp_groupbench_{os.getpid()}"
    params = conninfo_to_dict(args.dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    subprocess.run(
        [sys.executable, "-m", "storectl", "db", "deploy", "--dsn", dsn],
        check=True,
        capture_output=True,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA bench")
            conn.execute("CREATE TABLE bench.raw_events (LIKE utcp.stored_events INCLUDING ALL)")
        settings = Settings(pool_min_size=THREADS + 1, pool_max_size=THREADS + 2)
        stores = {
            "append_events": EventStore.open(
                dsn, msgspec.structs.replace(settings, group_commit=False)
            ),
            "alone": EventStore.open(dsn, msgspec.structs.replace(settings, group_commit=False)),
            "groups": EventStore.open(dsn, msgspec.structs.replace(settings, group_commit=True)),
        }
        stores["append_events"]._db.append_group = False  # the old path
        samples: dict[tuple[str, str], list[Sample]] = {}
        try:
            for case in cases:  # warm-up: one short round of each mode
                for mode in MODES:
                    run_case(mode, case, args.scale * 0.2, dsn, stores)
            for r in range(args.rounds):
                for case in cases:
                    order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
                    for mode in order:
                        sample = run_case(mode, case, args.scale, dsn, stores)
                        samples.setdefault((case, mode), []).append(sample)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for s in stores.values():
                s.close()
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )

    load = os.getloadavg()
    print(f"rounds={args.rounds} scale={args.scale} load average {load[0]:.1f} {load[1]:.1f}")
    print(
        f"{'case':8} {'mode':14} {'events/s':>9} {'spread':>7} {'vs raw':>7} "
        f"{'vs alone':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu µs':>7} {'group':>6}"
    )
    for case in cases:
        rates = {m: statistics.median(s.rate for s in samples[case, m]) for m in MODES}
        for mode in MODES:
            runs = samples[case, mode]
            spread = (max(s.rate for s in runs) - min(s.rate for s in runs)) / rates[mode]
            p50 = statistics.median(quantile(s.latencies, 0.5) for s in runs) * 1000
            p99 = statistics.median(quantile(s.latencies, 0.99) for s in runs) * 1000
            cpu = statistics.median(s.cpu_per_append for s in runs)
            sizes = [s.group_size for s in runs if s.group_size is not None]
            group = f"{statistics.median(sizes):6.1f}" if sizes else f"{'':6}"
            print(
                f"{case:8} {mode:14} {rates[mode]:9.0f} {spread:6.0%} "
                f"{rates[mode] / rates['raw']:6.2f}x {rates[mode] / rates['alone']:7.2f}x "
                f"{p50:7.2f} {p99:7.2f} {cpu:7.0f} {group}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
