"""The benchmark of issue 10: the store beside raw psycopg and the
``eventsourcing`` library's PostgreSQL recorder, in one run on one server.

    python -m bench.run --quick     # CI-like, under 3 minutes on 2 cores
    python -m bench.run             # the full run
    make bench                      # the full run (make bench-quick: --quick)

It creates a database of its own through the admin DSN (``--dsn``, else
``$EVENTSTORE_TEST_DSN``), deploys the schema with ``eventstore db deploy``,
and drops it at the end (``--keep`` keeps it). Prints one table and writes
a JSON file (``--json``, default bench/results/latest.json). bench/README.md
says what each case measures and how to read it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore import EventStore, NewEvent, Settings
from eventstore import sql as store_sql
from projections.runner import ProjectionRunner
from projections.trading import TradingProjection
from trading import CashDeposited, PortfolioOpened, Trade, trading_registry
from trading.sql import TRADE_IN_STREAM

from . import sides
from .append_bench import raw_connect, trade_payloads
from .sides import EsSide

ADMIN_ENV: Final = "EVENTSTORE_TEST_DSN"
THREADS: Final = 8
BATCH: Final = 100
ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    rounds: int
    single: int  # events per round, append-1
    batches: int  # 100-event transactions per round
    per_thread: int  # events per writer per round, append-8w
    hot_per_thread: int
    streams: int  # read-stream: streams of 100 events
    rebuild_sizes: tuple[int, int]
    lag_seconds: float
    log_sizes: tuple[int, int]


QUICK: Final = Sizes(3, 150, 8, 30, 15, 50, (4_000, 12_000), 3.0, (40_000, 100_000))
FULL: Final = Sizes(5, 2_000, 40, 300, 100, 1_000, (50_000, 200_000), 15.0, (100_000, 1_000_000))


@dataclass
class Case:
    name: str
    what: str
    events: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, side: str) -> float | None:
        values = self.rates.get(side)
        return statistics.median(values) if values else None

    def ratios(self, other: str, side: str = "store") -> list[float]:
        return [
            s / o for s, o in zip(self.rates.get(side, []), self.rates.get(other, []), strict=False)
        ]


class CountMismatch(Exception):
    pass


def measure(case: Case, rounds: int, work: dict[str, Callable[[int], int]]) -> Case:
    """``rounds`` rounds; each runs every side once, the order rotating from
    round to round so slow drift of the machine hits every side alike."""
    names = list(work)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for side in order:
            start = time.perf_counter()
            n = work[side](r)
            elapsed = time.perf_counter() - start
            if n != case.events:
                raise CountMismatch(f"{case.name}: {side} handled {n} events, not {case.events}")
            case.rates.setdefault(side, []).append(n / elapsed)
    return case


def parallel(n: int, work: Callable[[int], int]) -> int:
    barrier = threading.Barrier(n)
    counts = [0] * n
    errors: list[BaseException] = []

    def body(t: int) -> None:
        try:
            barrier.wait()
            counts[t] = work(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts)


# -- the database ---------------------------------------------------------------


def create_database(admin_dsn: str) -> str:
    name = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    dsn = make_conninfo(admin_dsn, dbname=name)
    deploy = subprocess.run(
        [sys.executable, "-m", "storectl", "db", "deploy", "--dsn", dsn],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if deploy.returncode != 0:
        drop_database(admin_dsn, name)
        sys.stderr.write(deploy.stdout + deploy.stderr)
        raise SystemExit(f"`eventstore db deploy` failed with exit code {deploy.returncode}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bench")
        conn.execute("CREATE TABLE bench.raw_events (LIKE utcp.stored_events INCLUDING ALL)")
    return dsn


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )


def environment(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
        "current_setting('fsync')"
    ).fetchone()
    assert row is not None
    return {
        "postgresql": row[0],
        "synchronous_commit": row[1],
        "fsync": row[2],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "msgspec": msgspec.__version__,
        "eventsourcing": importlib.metadata.version("eventsourcing"),
        "load_at_start": round(os.getloadavg()[0], 2),
    }


# -- the cases ------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        dsn: str,
        sizes: Sizes,
        stores: dict[str, EventStore],
        raw: list[psycopg.Connection[Any]],
        es: EsSide,
    ) -> None:
        self.dsn = dsn
        self.sizes = sizes
        self.stores = stores  # "store" (the default settings), maybe "store-gc-off"
        self.raw = raw
        self.es = es
        self.payloads = trade_payloads(max(sizes.single, sizes.batches * BATCH), "one")
        self.thread_payloads = [
            trade_payloads(max(sizes.per_thread, sizes.hot_per_thread), f"w{t}")
            for t in range(THREADS)
        ]
        self.written = 0  # events each side has written

    def store_sides(
        self, make: Callable[[EventStore, str], Callable[[int], int]]
    ) -> dict[str, Any]:
        return {name: make(store, name) for name, store in self.stores.items()}

    def warm_up(self) -> None:
        """Every code path on every side, every pooled and raw connection
        used once; balance() evens the tables out before the reads."""
        few = self.payloads[:50]
        for name, store in self.stores.items():
            sides.store_single(store, f"warm-{name}", few)
            sides.store_batches(store, f"warm-b-{name}", self.payloads[:200], BATCH)

            def warm8(t: int, st: EventStore = store, n: str = name) -> int:
                return sides.store_single(st, f"warm8-{n}-{t}", few[:5])

            parallel(THREADS, warm8)
        sides.raw_batches(self.raw[0], "warm-b", self.payloads[:200], BATCH)
        for t in range(THREADS):
            sides.raw_single(self.raw[t], f"warm-{t}", few[:5])
        self.es.single("warm", few)
        self.es.batches("warm-b", self.payloads[:200], BATCH)

    def append_1(self) -> list[Case]:
        s = self.sizes
        single = self.payloads[: s.single]
        work: dict[str, Callable[[int], int]] = self.store_sides(
            lambda st, name: lambda r: sides.store_single(st, f"a1-{name}-{r}", single)
        )
        work["raw"] = lambda r: sides.raw_single(self.raw[0], f"a1-{r}", single)
        work["es"] = lambda r: self.es.single(f"a1-{r}", single)
        case = measure(Case("append-1", "1 writer, 1 event/tx", s.single), s.rounds, work)
        self._written(work, s.rounds * s.single)
        return [case]

    def append_100(self) -> list[Case]:
        s = self.sizes
        payloads = self.payloads[: s.batches * BATCH]
        work: dict[str, Callable[[int], int]] = self.store_sides(
            lambda st, name: lambda r: sides.store_batches(st, f"a100-{name}-{r}", payloads, BATCH)
        )
        work["raw"] = lambda r: sides.raw_batches(self.raw[0], f"a100-{r}", payloads, BATCH)
        work["es"] = lambda r: self.es.batches(f"a100-{r}", payloads, BATCH)
        case = measure(Case("append-100", "1 writer, 100 events/tx", len(payloads)), s.rounds, work)
        self._written(work, s.rounds * len(payloads))
        return [case]

    def append_8w(self) -> list[Case]:
        s = self.sizes
        mine = [p[: s.per_thread] for p in self.thread_payloads]
        work: dict[str, Callable[[int], int]] = self.store_sides(
            lambda st, name: (
                lambda r: parallel(
                    THREADS, lambda t: sides.store_single(st, f"a8-{name}-{r}-{t}", mine[t])
                )
            )
        )
        work["raw"] = lambda r: parallel(
            THREADS, lambda t: sides.raw_single(self.raw[t], f"a8-{r}-{t}", mine[t])
        )
        work["es"] = lambda r: parallel(THREADS, lambda t: self.es.single(f"a8-{r}-{t}", mine[t]))
        case = measure(
            Case(
                "append-8w", "8 writer threads, 1 event/call, own streams", THREADS * s.per_thread
            ),
            s.rounds,
            work,
        )
        self._written(work, s.rounds * THREADS * s.per_thread)
        return [case]

    def append_8w_hot(self) -> list[Case]:
        s = self.sizes
        mine = [p[: s.hot_per_thread] for p in self.thread_payloads]
        conflicts: dict[str, int] = {}

        def hot(side: str, one: Callable[[int, int], tuple[int, int]]) -> Callable[[int], int]:
            def run(r: int) -> int:
                results: list[tuple[int, int]] = [(0, 0)] * THREADS

                def body(t: int) -> int:
                    results[t] = one(r, t)
                    return results[t][0]

                n = parallel(THREADS, body)
                conflicts[side] = conflicts.get(side, 0) + sum(c for _, c in results)
                return n

            return run

        work: dict[str, Callable[[int], int]] = self.store_sides(
            lambda st, name: hot(name, lambda r, t: sides.store_hot(st, f"hot-{name}-{r}", mine[t]))
        )
        work["raw"] = hot("raw", lambda r, t: sides.raw_hot(self.raw[t], f"hot-{r}", mine[t]))
        work["es"] = hot("es", lambda r, t: self.es.hot(f"hot-{r}", mine[t]))
        case = measure(
            Case(
                "append-8w-hot",
                "8 writer threads, one stream, expected versions",
                THREADS * s.hot_per_thread,
            ),
            s.rounds,
            work,
        )
        total = s.rounds * THREADS * s.hot_per_thread
        case.extra["conflicts_per_event"] = {k: v / total for k, v in conflicts.items()}
        self._written(work, total)
        return [case]

    def _written(self, work: dict[str, Any], per_side: int) -> None:
        self.written += per_side

    def balance(self) -> None:
        """Top every table up to the fullest one (warm-ups and a second
        store side write different amounts), so reads cover equal logs."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            store_rows, raw_rows, es_rows = sides.count_rows(conn)
        most = max(store_rows, raw_rows, es_rows)
        payloads = trade_payloads(most, "fill")
        if most > store_rows:
            sides.store_batches(self.stores["store"], "fill", payloads[: most - store_rows], 1000)
        if most > raw_rows:
            sides.raw_batches(self.raw[0], "fill", payloads[: most - raw_rows], 1000)
        if most > es_rows:
            self.es.batches("fill", payloads[: most - es_rows], 1000)

    def read_all(self) -> list[Case]:
        s = self.sizes
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("ANALYZE utcp.stored_events")
            conn.execute("ANALYZE bench.raw_events")
            conn.execute("ANALYZE public.es_events")
            store_rows, raw_rows, es_rows = sides.count_rows(conn)
        if not store_rows == raw_rows == es_rows:
            raise CountMismatch(f"rows: store {store_rows}, raw {raw_rows}, es {es_rows}")
        store = self.stores["store"]
        # read_all hands out only events older than every transaction still
        # running in the cluster (docs/design.md §4): another session's open
        # transaction holds the newest back. Wait until all are readable.
        deadline = time.perf_counter() + 300
        while (seen := sides.store_read_all(store, raw=True)) < store_rows:
            if time.perf_counter() > deadline:
                raise CountMismatch(
                    f"read_all sees {seen} of {store_rows} events after 300 s: a long "
                    "transaction elsewhere in the cluster holds the readers' horizon"
                )
            time.sleep(0.5)
        cases = []
        for raw, label in ((False, "decoded payloads"), (True, "payloads as bytes")):
            work: dict[str, Callable[[int], int]] = {
                "store": lambda r, raw=raw: sides.store_read_all(store, raw=raw),  # type: ignore[misc]
                "raw": lambda r, raw=raw: sides.raw_read_all(self.raw[0], raw=raw),  # type: ignore[misc]
                "es": lambda r, raw=raw: self.es.read_all(raw=raw),  # type: ignore[misc]
            }
            name = "read-all-bytes" if raw else "read-all"
            cases.append(
                measure(
                    Case(name, f"whole log, pages of 1,000, {label}", store_rows), s.rounds, work
                )
            )
        return cases

    def read_stream(self) -> list[Case]:
        s = self.sizes
        names = [f"rs-{i}" for i in range(s.streams)]
        store = self.stores["store"]
        payloads = trade_payloads(BATCH, "rs")
        for name in names:
            sides.store_batches(store, name, payloads, BATCH)
            sides.raw_batches(self.raw[0], name, payloads, BATCH)
            self.es.batches(name, payloads, BATCH)
        work: dict[str, Callable[[int], int]] = {
            "store": lambda r: sides.store_read_streams(store, names),
            "raw": lambda r: sides.raw_read_streams(self.raw[0], names),
            "es": lambda r: self.es.read_streams(names),
        }
        return [
            measure(
                Case("read-stream", f"rehydrate {s.streams:,} streams of 100", s.streams * BATCH),
                s.rounds,
                work,
            )
        ]


# -- rebuild, catch-up lag, log size ----------------------------------------------


def trading_events(portfolio: str, start: int, count: int) -> list[NewEvent]:
    base = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
    events: list[NewEvent] = []
    if start == 0:
        events.append(
            NewEvent(
                PortfolioOpened.EVENT_TYPE,
                PortfolioOpened(
                    portfolio_id=portfolio, name=portfolio, base_currency="USD", opened_at=base
                ),
            )
        )
        events.append(
            NewEvent(
                CashDeposited.EVENT_TYPE,
                CashDeposited(
                    deposit_id=f"d-{portfolio}",
                    portfolio_id=portfolio,
                    amount=Decimal("1000000"),
                    occurred_at=base,
                ),
            )
        )
    symbols = ("AAPL", "MSFT", "NVDA", "BRK.B", "TSLA")
    i = start
    while len(events) < count:
        events.append(
            NewEvent(
                Trade.EVENT_TYPE,
                Trade(
                    trade_id=f"t-{portfolio}-{i}",
                    portfolio_id=portfolio,
                    symbol=symbols[i % len(symbols)],
                    side="buy" if i % 3 else "sell",
                    quantity=Decimal(1 + i % 7),
                    price=Decimal(100 + i % 50) + Decimal(i % 100) / 100,
                    fees=Decimal("0.35"),
                    executed_at=base + dt.timedelta(seconds=i),
                    order_id=f"o-{i}",
                ),
            )
        )
        i += 1
    return events


def write_trading_log(store: EventStore, target: int, portfolios: int = 50) -> None:
    """Trading events up to ``target`` in the log's trading streams, in
    batches of 500 per portfolio stream, from 4 threads."""

    def body(t: int) -> int:
        n = 0
        for p in range(t, portfolios, 4):
            pid = f"rb{p}"
            stream = f"portfolio-{pid}"
            have = store.stream_version(stream)
            want = target // portfolios
            while have < want:
                events = trading_events(pid, have, min(500, want - have))
                store.append(stream, events)
                have += len(events)
                n += len(events)
        return n

    parallel(4, body)


def rebuild_case(dsn: str, sizes: Sizes, raw_conn: psycopg.Connection[Any]) -> Case:
    case = Case("rebuild", "projections rebuild of a trading log", 0)
    runs = []
    with EventStore.open(dsn, registry=trading_registry()) as store:
        for size in sizes.rebuild_sizes:
            write_trading_log(store, size)
            for mode in ("raw", "decoded"):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.rebuild_child", dsn]
                    + (["--decoded"] if mode == "decoded" else []),
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=ROOT,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"rebuild child failed: {out.stderr[-2000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result["mode"] = mode
                result["log_events"] = size
                runs.append(result)
            # The raw read rate of the same events (decoded, keyset pages).
            start = time.perf_counter()
            n = 0
            last: tuple[str, int] = ("0", 0)
            cur = raw_conn.cursor(binary=True)
            while True:
                rows = cur.execute(
                    sides.RAW_READ.replace("bench.raw_events", "utcp.stored_events"),
                    (*last, sides.PAGE),
                ).fetchall()
                if not rows:
                    break
                n += len(rows)
                last = (rows[-1][1], rows[-1][0])
            runs[-1]["raw_read_rate"] = runs[-2]["raw_read_rate"] = n / (
                time.perf_counter() - start
            )
    case.extra["runs"] = runs
    big = [r for r in runs if r["log_events"] == sizes.rebuild_sizes[1]]
    fast = next(r for r in big if r["mode"] == "raw")
    slow = next(r for r in big if r["mode"] == "decoded")
    case.events = fast["events"]
    case.rates = {"store": [fast["events"] / fast["seconds"]], "raw": [fast["raw_read_rate"]]}
    small = next(
        r for r in runs if r["log_events"] == sizes.rebuild_sizes[0] and r["mode"] == "raw"
    )
    case.note = (
        f"peak RSS {small['maxrss_mib']:.0f} MiB at {small['events']:,} events, "
        f"{fast['maxrss_mib']:.0f} MiB at {fast['events']:,}; decoded-dict path "
        f"{slow['events'] / slow['seconds']:,.0f} ev/s"
    )
    return case


def lag_case(dsn: str, sizes: Sizes) -> Case:
    """Commit → projection applied, while 8 writer threads append trades."""
    case = Case("catch-up-lag", "commit to projection applied, under 8 writers", 0)
    applied_at: dict[int, float] = {}
    pending: list[int] = []

    class Timed(TradingProjection):
        def apply(self, conn: Any, events: Any, tables: Any) -> None:
            super().apply(conn, events, tables)
            pending.extend(e.position for e in events)

    def progress(count: int, last: Any) -> None:
        now = time.perf_counter()
        for position in pending:
            applied_at.setdefault(position, now)
        pending.clear()

    settings = Settings(pool_min_size=THREADS + 2, pool_max_size=THREADS + 2)
    committed: dict[int, float] = {}
    with EventStore.open(dsn, settings, registry=trading_registry()) as store:
        runner = ProjectionRunner(store, dsn, Timed(), batch_size=500, poll_interval=0.5)
        stop = threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                runner.run(stop, progress=progress)
            except BaseException as exc:
                failures.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        # Opened portfolios first; writers start once the worker has caught
        # up with whatever the log held (no backlog in the lags).
        opened = [
            store.append(f"portfolio-lag{t}", trading_events(f"lag{t}", 0, 2)).positions[-1]
            for t in range(THREADS)
        ]
        wait_until = time.perf_counter() + 120
        while not all(p in applied_at for p in opened) and not failures:
            if time.perf_counter() > wait_until:
                raise RuntimeError("the projection worker did not catch up within 120 s")
            time.sleep(0.02)
        deadline = time.perf_counter() + sizes.lag_seconds

        def writer(t: int) -> int:
            i, n = 2, 0
            while time.perf_counter() < deadline:
                (event,) = trading_events(f"lag{t}", i, 1)
                result = store.append(f"portfolio-lag{t}", [event])
                committed[result.positions[0]] = time.perf_counter()
                i += 1
                n += 1
            return n

        written = parallel(THREADS, writer)
        wait_until = time.perf_counter() + 60
        while (
            time.perf_counter() < wait_until
            and not failures
            and not all(p in applied_at for p in committed)
        ):
            time.sleep(0.02)
        stop.set()
        worker.join()
        if failures:
            raise failures[0]
    lags = sorted((applied_at[p] - t) * 1000 for p, t in committed.items() if p in applied_at)
    case.events = written
    if lags:
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        case.extra = {"median_ms": statistics.median(lags), "p99_ms": p99, "samples": len(lags)}
        case.note = (
            f"median {statistics.median(lags):.1f} ms, p99 {p99:.1f} ms ({len(lags):,} events)"
        )
    return case


BULK_SYMBOL: Final = "BULK0"


def bulk_fill(dsn: str, total: int) -> None:
    """Bulk-imported events up to ``total``, appended through
    utcp.append_events() in server-side loops (no round trip per batch):
    100-event batches of an unregistered type whose business
    times all tie (one timestamp, as a bulk import), over 50 symbols."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Counted in bulk-imported events: the tied groups grow with them,
        # whatever the earlier cases left in the log.
        have = int(
            conn.execute(  # type: ignore[index]
                "SELECT count(*) FROM utcp.stored_events WHERE type = 'BulkImported'"
            ).fetchone()[0]
        )
        calls = max(0, (total - have) // 100)
        step = 200
        for first in range(0, calls, step):
            conn.execute(
                """
SELECT count(*) FROM generate_series(%s::int, %s::int) g,
 LATERAL utcp.append_events('bulk-' || g || '-' || %s, NULL::bigint, NULL::text, gen_random_uuid(),
   (SELECT jsonb_agg(jsonb_build_object('id', gen_random_uuid(), 'type', 'BulkImported',
       'data', jsonb_build_object('symbol', 'BULK' || (i %% 50), 'occurred_at',
                                  '2026-01-01T00:00:00Z', 'n', i, 'g', g)))
      FROM generate_series(1, 100) i))""",
                (first, min(calls, first + step) - 1, have),
            )
        conn.execute("ANALYZE utcp.stored_events")


def timed_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm: plan cached, pages in shared buffers
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def server_ms(conn: psycopg.Connection[Any], query: Any, params: Any, repeat: int = 5) -> float:
    """The server's execution time (EXPLAIN ANALYZE), median of ``repeat``:
    what grows with the log, without the client's scheduling noise."""
    sql_query = pgsql.SQL(query) if isinstance(query, str) else query
    explain = pgsql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + sql_query
    times = []
    for _ in range(repeat + 1):
        row = conn.execute(explain, params).fetchone()
        assert row is not None
        times.append(float(row[0][0]["Execution Time"]))
    return statistics.median(times[1:])


def plan_text(conn: psycopg.Connection[Any], query: Any, params: Any) -> str:
    sql_query = pgsql.SQL(query) if isinstance(query, str) else query
    explain = pgsql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ") + sql_query
    return "\n".join(r[0] for r in conn.execute(explain, params).fetchall())


def _find(**used: bool) -> Any:
    flags = dict.fromkeys(("type", "symbol", "category", "stream_id", "since", "until"), False)
    flags.update(used)
    return store_sql.find_events(**flags)


#: (name, query, parameters) of the reads the store and the adapter run that
#: could grow with the log.
SIZE_QUERIES: Final = (
    ("find_events(symbol), tied times", _find(symbol=True), {"symbol": BULK_SYMBOL, "limit": 100}),
    ("find_events(type), tied times", _find(type=True), {"type": "BulkImported", "limit": 100}),
    (
        "find_events(category), tied times",
        _find(category=True),
        {"category": "bulk", "limit": 100},
    ),
    (
        "find_events(type, stream_id) (list_trades)",
        _find(type=True, stream_id=True),
        {"type": "TradeExecuted", "stream_id": "portfolio-rb0", "limit": 100},
    ),
    ("adapter TRADE_IN_STREAM (cancel_trade)", TRADE_IN_STREAM, ("portfolio-rb0", "t-rb0-7")),
    ("read_all first page", store_sql.READ_ALL, ("0", 0, 1001)),
    ("read_stream of 100", store_sql.READ_STREAM, ("rs-1", 1, None)),
)


def log_size_case(dsn: str, sizes: Sizes) -> tuple[list[dict[str, Any]], str]:
    """Every read query's server time and some client calls, at two log
    sizes (business times tied in the bulk import); and the plans."""
    rows: list[dict[str, Any]] = []
    plans = ""
    payload = trade_payloads(1, "ls")[0]
    with EventStore.open(dsn, registry=trading_registry()) as store:
        for size in sizes.log_sizes:
            bulk_fill(dsn, size)
            last = size == sizes.log_sizes[-1]
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
                assert row is not None
                count = int(row[0])
                result: dict[str, Any] = {"log_events": count}
                for name, query, params in SIZE_QUERIES:
                    result[f"server: {name}"] = server_ms(conn, query, params)
                    if last:
                        plans += f"-- {name} at {count:,} events\n"
                        plans += plan_text(conn, query, params) + "\n"
                # The index this change replaces, in a rolled-back transaction.
                with conn.transaction(force_rollback=True):
                    conn.execute("DROP INDEX utcp.stored_events_symbol_time")
                    conn.execute(
                        "CREATE INDEX stored_events_symbol_time ON utcp.stored_events "
                        "(symbol, occurred_at) WHERE symbol IS NOT NULL"
                    )
                    name, query, params = SIZE_QUERIES[0]
                    result[f"server: {name}, old index"] = server_ms(conn, query, params)
                    if last:
                        plans += (
                            f"-- {name} at {count:,} events, with event_indexes' "
                            "(symbol, occurred_at)\n" + plan_text(conn, query, params) + "\n"
                        )
            stream = f"ls-{size}"

            def append_one(s: str = stream) -> Any:
                return store.append(s, [NewEvent(sides.EVENT_TYPE, payload)])

            result["client: store.find_events(symbol)"] = timed_ms(
                lambda: store.find_events(symbol=BULK_SYMBOL, limit=100), 20
            )
            result["client: store.read_all first page"] = timed_ms(
                lambda: store.read_all(limit=1000), 10
            )
            result["client: store.append of 1"] = timed_ms(append_one, 30)
            rows.append(result)
    return rows, plans


# -- report -------------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(values: list[float]) -> str:
    return "-" if not values else f"{statistics.median(values):.2f}"


def spread(values: list[float]) -> str:
    return "-" if len(values) < 2 else f"{min(values):.2f}-{max(values):.2f}"


HEADER: Final = ("case", "side", "events", "ev/s", "x raw", "x es", "spread x raw", "note")
WIDTHS: Final = (15, 13, 9, 10, 6, 6, 12, 0)


def line(cols: Sequence[str]) -> str:
    return "  ".join(
        c.ljust(w) if i in (0, 1, 7) else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, WIDTHS, strict=True))
    ).rstrip()


def table(cases: list[Case]) -> list[str]:
    out = [line(HEADER)]
    for case in cases:
        stores = [s for s in case.rates if s.startswith("store")] or ["store"]
        for side in stores:
            out.append(
                line(
                    (
                        case.name,
                        side,
                        f"{case.events:,}" if case.events else "-",
                        fmt_rate(case.median(side)) if case.rates else "-",
                        fmt_ratio(case.ratios("raw", side)),
                        fmt_ratio(case.ratios("es", side)),
                        spread(case.ratios("raw", side)),
                        case.note if side == stores[0] else "",
                    )
                )
            )
        for other in ("raw", "es"):
            if other in case.rates:
                out.append(line(("", other, "", fmt_rate(case.median(other)), "", "", "", "")))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(ADMIN_ENV, "postgresql://root@127.0.0.1:5432/postgres"),
        help=f"an admin DSN: the benchmark creates (and drops) a database of its own "
        f"through it (default ${ADMIN_ENV})",
    )
    parser.add_argument("--quick", action="store_true", help="a CI-like run, under 3 minutes")
    parser.add_argument("--rounds", type=int, help="rounds per case")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's database")
    parser.add_argument(
        "--only", help="comma-separated cases (append,read,rebuild,lag,http,size)", default=""
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="JSON output"
    )
    return parser.parse_args(argv)


def http_case(dsn: str, calls: int) -> Case:
    """Tool calls over loopback HTTP at 16 clients (bench/http_bench.py,
    which also measures 1 client): calls/s, p50/p99, and the ratio to the
    same work through the library in the same process."""
    from bench import http_bench  # noqa: PLC0415 (the service extra)

    results = http_bench.measure(dsn, calls)
    by = {(r.case, r.clients, r.side): r for r in results}
    parts = []
    for (tool, clients, side), r in by.items():
        if side != "http" or clients != 16:
            continue
        library = by[(tool, clients, "library")]
        parts.append(
            f"{tool} {r.rate:,.0f} calls/s (p50 {r.percentile(0.5):.1f} ms, "
            f"p99 {r.percentile(0.99):.1f} ms, x library {r.rate / library.rate:.2f})"
        )
    return Case("http", "16 clients over loopback", 0, note="; ".join(parts))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    only = set(filter(None, args.only.split(",")))
    started = time.perf_counter()
    dsn = create_database(args.dsn)
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    print(f"database {dbname} (created; {'kept' if args.keep else 'dropped'} at the end)")
    cases: list[Case] = []
    size_rows: list[dict[str, Any]] = []
    plans = ""
    group_commit = hasattr(Settings(), "group_commit")
    try:
        settings = Settings(pool_min_size=THREADS, pool_max_size=THREADS)
        stores = {"store": EventStore.open(dsn, settings)}
        if group_commit:
            off = msgspec.structs.replace(settings, group_commit=False)
            stores["store-gc-off"] = EventStore.open(dsn, off)
        raw = [raw_connect(dsn) for _ in range(THREADS)]
        es = EsSide(dsn, THREADS)
        try:
            env = environment(raw[0])
            print("env: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
            bench = Bench(dsn, sizes, stores, raw, es)
            if not only or "append" in only or "read" in only:
                bench.warm_up()
                for step in (
                    bench.append_1,
                    bench.append_100,
                    bench.append_8w,
                    bench.append_8w_hot,
                ):
                    print(f"{step.__name__.replace('_', '-')}...", flush=True)
                    cases += step()
                bench.balance()
                print("read-all...", flush=True)
                cases += bench.read_all()
                print("read-stream...", flush=True)
                cases += bench.read_stream()
            if not only or "rebuild" in only:
                print("rebuild...", flush=True)
                cases.append(rebuild_case(dsn, sizes, raw[0]))
            if not only or "lag" in only:
                print("catch-up lag...", flush=True)
                cases.append(lag_case(dsn, sizes))
            if not only or "http" in only:
                print("http...", flush=True)
                cases.append(http_case(dsn, 100 if args.quick else 1000))
            if not only or "size" in only:
                print("log size...", flush=True)
                size_rows, plans = log_size_case(dsn, sizes)
        finally:
            for store in stores.values():
                store.close()
            for conn in raw:
                conn.close()
            es.close()
    except CountMismatch as exc:
        print(f"COUNT MISMATCH: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            drop_database(args.dsn, dbname)

    print()
    print(
        "events/s: median of rounds after a warm-up; x raw / x es: median of per-round ratios "
        "store/raw and store/eventsourcing; spread: min-max of the per-round x raw"
    )
    if not group_commit:
        print("group commit: no such setting on this branch (one store row per case)")
    print()
    for text in table(cases):
        print(text)
    if size_rows:
        print()
        print(
            "log size (median ms)"
            + " " * 40
            + "   ".join(f"{r['log_events']:>10,}" for r in size_rows)
        )
        for key in size_rows[-1]:
            if key == "log_events":
                continue
            print(
                f"  {key:<58}"
                + "   ".join(f"{r[key]:>10.2f}" if key in r else f"{'-':>10}" for r in size_rows)
            )
    print()
    print(
        f"total {time.perf_counter() - started:.0f} s; "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "mode": "quick" if args.quick else "full",
                "sizes": asdict(sizes),
                "cases": [
                    {
                        "name": c.name,
                        "what": c.what,
                        "events": c.events,
                        "median": {s: c.median(s) for s in c.rates},
                        "rates": c.rates,
                        "x_raw": {s: c.ratios("raw", s) for s in c.rates if s.startswith("store")},
                        "x_es": {s: c.ratios("es", s) for s in c.rates if s.startswith("store")},
                        "note": c.note,
                        "extra": c.extra,
                    }
                    for c in cases
                ],
                "log_size": size_rows,
                "plans": plans,
            },
            indent=1,
        )
    )
    if plans:
        (args.json.parent / "plans.txt").write_text(plans)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
