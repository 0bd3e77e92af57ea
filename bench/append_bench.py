"""The store's public API against raw psycopg, in one run on one server.

    python -m bench.append_bench            # full run, about 2-4 minutes on 2 cores
    python -m bench.append_bench --quick    # smoke run, about 20-30 seconds

The store side uses only the public API (``EventStore.open``, ``append``,
``read_all``). The raw side writes the same rows, with the same JSON library
(msgspec), into ``bench.raw_events``: a copy of ``utcp.stored_events`` made
with ``LIKE ... INCLUDING ALL`` (identity, defaults, generated column,
constraints and indexes; no triggers), through one plain autocommit psycopg
connection per writer thread. That is the ceiling; the store's overheads are
quoted as ratios to it. See bench/README.md for how to read the output.

The benchmark owns its database (default ``utcp_bench``): it drops and
re-creates it on every run and deploys the schema with the project's own
``python -m storectl db deploy``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec
import psycopg
from psycopg import postgres
from psycopg import sql as pgsql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import Format
from psycopg.types.json import set_json_loads

from eventstore import EventStore, NewEvent, Settings
from eventstore.events import uuid7

DSN_ENV: Final = "EVENTSTORE_BENCH_DSN"
DEFAULT_DSN: Final = "postgresql://root@127.0.0.1:5432/utcp_bench"

#: Not registered: the store validates it only as a JSON object, so both
#: sides do the same work. "TradeExecuted" (registered, validated against
#: trading.events.Trade) is measured once more, for information.
EVENT_TYPE: Final = "BenchTradeRecorded"
REGISTERED_TYPE: Final = "TradeExecuted"
BATCH: Final = 100
THREADS: Final = 8
PAGE: Final = 1000
EXIT_COUNT_MISMATCH: Final = 1
#: Warm-up rounds that time the two raw forms of a 100-event transaction.
CALIBRATION_ROUNDS: Final = 5

METADATA: Final = {"actor": "trading-assistant", "session": "bench", "source": "append_bench"}

# -- raw side: SQL ------------------------------------------------------------

RAW_COLUMNS: Final = (
    "event_id, stream_id, stream_version, type, data, metadata, symbol, "
    "occurred_at, created_at, prev_hash, hash"
)
RAW_INSERT_ONE: Final = f"""
INSERT INTO bench.raw_events ({RAW_COLUMNS})
VALUES (%b, %b, %b, %b, %b, %b, %b, now(), now(), %b, %b)"""

RAW_INSERT_UNNEST: Final = f"""
INSERT INTO bench.raw_events ({RAW_COLUMNS})
SELECT u.id, %b, u.v, %b, u.d, u.m, u.s, now(), now(), u.p, u.h
  FROM unnest(%b::uuid[], %b::int8[], %b::jsonb[], %b::jsonb[], %b::text[], %b::bytea[],
              %b::bytea[]) AS u(id, v, d, m, s, p, h)"""

RAW_INSERT_RECORDSET: Final = f"""
INSERT INTO bench.raw_events ({RAW_COLUMNS})
SELECT x.id, %b, x.v, %b, x.data, x.metadata, x.symbol, now(), now(),
       decode(x.prev, 'hex'), decode(x.hash, 'hex')
  FROM jsonb_to_recordset(%b) AS x(id uuid, v bigint, data jsonb, metadata jsonb,
                                   symbol text, prev text, hash text)"""

RAW_FORMS: Final = {
    "unnest": "INSERT ... SELECT FROM unnest(binary arrays)",
    "recordset": "INSERT ... SELECT FROM jsonb_to_recordset(one msgspec-encoded jsonb)",
}

# Keyset paging through the table's own (tx_id, position) index: the table
# has no index on position alone, and "WHERE position > %s ORDER BY position"
# would sort the rest of the table for every page (quadratic in the log).
RAW_READ: Final = """
SELECT position, tx_id::text AS tx, event_id, stream_id, stream_version, type, data, metadata,
       symbol, occurred_at, created_at, prev_hash, hash
  FROM bench.raw_events
 WHERE (tx_id, position) > (%s::xid8, %b)
 ORDER BY tx_id, position
 LIMIT %b"""


class _Jsonb(bytes):
    """msgspec-encoded JSON, sent as a binary jsonb parameter."""

    __slots__ = ()


class _JsonbDumper(Dumper):
    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Buffer) -> Buffer:
        return b"\x01" + bytes(obj)  # jsonb binary format: version 1, then the text


class _RecordsetRow(msgspec.Struct, omit_defaults=True):
    id: str
    v: int
    data: msgspec.Raw
    metadata: msgspec.Raw
    symbol: str
    hash: str
    prev: str | None = None


_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode


def raw_connect(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True, application_name="append_bench-raw")
    conn.adapters.register_dumper(_Jsonb, _JsonbDumper)
    set_json_loads(_decode, conn)
    return conn


class RawStream:
    """One stream written by raw psycopg: the writer knows its own versions
    and chains a sha256 over the previous hash and the data client-side."""

    def __init__(self, conn: psycopg.Connection[Any], stream_id: str) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.version = 0
        self.head: bytes | None = None

    def _event(self, payload: dict[str, str]) -> tuple[Any, ...]:
        data = _encode(payload)
        meta = _encode(METADATA)
        prev = self.head
        digest = hashlib.sha256(prev + data if prev else data).digest()
        self.version += 1
        self.head = digest
        return uuid7(), self.version, _Jsonb(data), _Jsonb(meta), payload["symbol"], prev, digest

    def append_one(self, payload: dict[str, str]) -> int:
        eid, version, data, meta, symbol, prev, digest = self._event(payload)
        cur = self.conn.execute(
            RAW_INSERT_ONE,
            (eid, self.stream_id, version, EVENT_TYPE, data, meta, symbol, prev, digest),
        )
        return cur.rowcount

    def append_unnest(self, payloads: Sequence[dict[str, str]]) -> int:
        rows = [self._event(p) for p in payloads]
        ids, versions, datas, metas, symbols, prevs, hashes = (
            list(c) for c in zip(*rows, strict=True)
        )
        cur = self.conn.execute(
            RAW_INSERT_UNNEST,
            (self.stream_id, EVENT_TYPE, ids, versions, datas, metas, symbols, prevs, hashes),
        )
        return cur.rowcount

    def append_recordset(self, payloads: Sequence[dict[str, str]]) -> int:
        rows = []
        for p in payloads:
            eid, version, data, meta, symbol, prev, digest = self._event(p)
            rows.append(
                _RecordsetRow(
                    id=str(eid),
                    v=version,
                    data=msgspec.Raw(data),
                    metadata=msgspec.Raw(meta),
                    symbol=symbol,
                    hash=digest.hex(),
                    prev=None if prev is None else prev.hex(),
                )
            )
        cur = self.conn.execute(
            RAW_INSERT_RECORDSET, (self.stream_id, EVENT_TYPE, _Jsonb(_encode(rows)))
        )
        return cur.rowcount


# -- payloads -------------------------------------------------------------------

SYMBOLS: Final = ("AAPL", "MSFT", "NVDA", "BRK.B", "BTC-USD", "ES:CME", "SAP.DE", "TSLA")


def trade_payloads(count: int, tag: str) -> list[dict[str, str]]:
    """Realistic trades, fields as in trading.events.Trade, decimals as
    strings (valid TradeExecuted payloads too)."""
    start = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
    out = []
    for i in range(count):
        price = Decimal(100 + (i * 37) % 900) + Decimal(i % 100) / 100
        out.append(
            {
                "trade_id": f"T-{tag}-{i:08d}",
                "portfolio_id": f"P-{i % 16:04d}",
                "symbol": SYMBOLS[i % len(SYMBOLS)],
                "side": "buy" if i % 3 else "sell",
                "quantity": str(Decimal(1 + i % 250) / 4),
                "price": str(price),
                "fees": str(Decimal(i % 7) / 10 + Decimal("0.35")),
                "executed_at": (start + dt.timedelta(milliseconds=137 * i)).isoformat(),
                "order_id": f"O-{tag}-{i // 2:08d}",
            }
        )
    return out


# -- measurement ------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rounds: int
    single: int  # events per round, one writer, 1 event/tx
    batches: int  # 100-event transactions per round, one writer
    per_thread: int  # events per writer thread per round, 8 writers, 1 event/tx
    warmup: int  # events per side in the warm-up of the 1-event cases


FULL: Final = Sizes(rounds=7, single=2500, batches=120, per_thread=500, warmup=400)
QUICK: Final = Sizes(rounds=3, single=600, batches=30, per_thread=150, warmup=150)


@dataclass
class CaseResult:
    name: str
    target: float | None
    events: int = 0
    store: list[float] = field(default_factory=list)  # events/s per round
    raw: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [s / r for s, r in zip(self.store, self.raw, strict=True)]

    def met(self) -> bool:
        return self.target is None or statistics.median(self.ratios) >= self.target


class CountMismatch(Exception):
    pass


Work = Callable[[int], int]  # round -> events written or read


def timed(work: Work, rnd: int) -> tuple[int, float]:
    start = time.perf_counter()
    count = work(rnd)
    return count, time.perf_counter() - start


def run_parallel(n: int, work: Callable[[int], int]) -> tuple[int, float]:
    """``work(thread)`` on n threads released together; (total count, seconds)."""
    barrier = threading.Barrier(n + 1)
    counts = [0] * n
    errors: list[BaseException] = []

    def body(t: int) -> None:
        try:
            barrier.wait()
            counts[t] = work(t)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(t,), name=f"writer-{t}") for t in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def measure(
    result: CaseResult, rounds: int, expected: int, store_work: Work, raw_work: Work
) -> CaseResult:
    """Alternating rounds (store first in rounds 1, 3, 5..., raw first in
    the others); each side must have handled exactly ``expected`` events."""
    result.events = expected
    for rnd in range(rounds):
        sides: list[tuple[str, Work, list[float]]] = [
            ("store", store_work, result.store),
            ("raw", raw_work, result.raw),
        ]
        if rnd % 2:
            sides.reverse()
        for side, work, rates in sides:
            count, seconds = timed(work, rnd)
            if count != expected:
                raise CountMismatch(
                    f"{result.name}, round {rnd + 1}: {side} handled {count} events, not {expected}"
                )
            rates.append(count / seconds)
        print(
            f"  {result.name}, round {rnd + 1}/{rounds}: store {result.store[-1]:,.0f}, "
            f"raw {result.raw[-1]:,.0f} ev/s",
            flush=True,
        )
    return result


class Bench:
    def __init__(self, store: EventStore, raw: list[psycopg.Connection[Any]], sizes: Sizes):
        self.store = store
        self.raw = raw
        self.sizes = sizes
        #: 100-event transactions per side and calibration round of the warm-up
        self.warm_batches = max(4, sizes.batches // 10)
        most = max(sizes.single, sizes.warmup, max(sizes.batches, self.warm_batches) * BATCH)
        self.payloads = trade_payloads(most, "b")
        #: events per writer thread in the warm-up
        self.warm_per_thread = max(10, sizes.warmup // THREADS)
        per_thread = max(sizes.per_thread, self.warm_per_thread)
        self.thread_payloads = [trade_payloads(per_thread, f"t{t}") for t in range(THREADS)]
        self.raw_form = "unnest"
        self.written = 0  # events each side has written so far

    # store side

    def store_single(self, stream: str, payloads: Sequence[dict[str, str]], kind: str) -> int:
        append = self.store.append
        n = 0
        for payload in payloads:
            n += len(append(stream, [NewEvent(kind, payload, METADATA)]).positions)
        return n

    def store_batches(self, stream: str, batches: int) -> int:
        n = 0
        payloads = self.payloads
        for b in range(batches):
            chunk = payloads[b * BATCH : (b + 1) * BATCH]
            events = [NewEvent(EVENT_TYPE, p, METADATA) for p in chunk]
            n += len(self.store.append(stream, events).positions)
        return n

    # raw side

    def raw_single(
        self, conn: psycopg.Connection[Any], stream: str, payloads: Sequence[dict[str, str]]
    ) -> int:
        writer = RawStream(conn, stream)
        return sum(writer.append_one(p) for p in payloads)

    def raw_batches(self, stream: str, batches: int, form: str | None = None) -> int:
        writer = RawStream(self.raw[0], stream)
        unnest = (form or self.raw_form) == "unnest"
        append = writer.append_unnest if unnest else writer.append_recordset
        payloads = self.payloads
        return sum(append(payloads[b * BATCH : (b + 1) * BATCH]) for b in range(batches))

    # reading

    def store_read_all(self, _: int = 0) -> int:
        n = 0
        after: str | None = None
        while True:
            page = self.store.read_all(after=after, limit=PAGE)
            if not page:
                return n
            n += len(page)
            after = page[-1].checkpoint

    def raw_read_all(self, _: int = 0) -> int:
        n = 0
        last: tuple[str, int] = ("0", 0)
        cur = self.raw[0].cursor(binary=True)
        while True:
            rows = cur.execute(RAW_READ, (*last, PAGE)).fetchall()
            if not rows:
                return n
            n += len(rows)
            last = (rows[-1][1], rows[-1][0])

    # the run

    def warm_up(self) -> dict[str, float]:
        """Every code path on both sides, all pooled connections prepared;
        also times the two raw forms of a 100-event transaction and keeps
        the faster. Both sides write the same number of events."""
        w = self.sizes.warmup
        few = self.payloads[:w]
        self.store_single("bench-warm-one", few, EVENT_TYPE)
        self.raw_single(self.raw[0], "bench-warm-one", few)
        per_thread = self.warm_per_thread
        run_parallel(
            THREADS,
            lambda t: self.store_single(
                f"bench-warm-eight-{t}", self.thread_payloads[t][:per_thread], EVENT_TYPE
            ),
        )
        run_parallel(
            THREADS,
            lambda t: self.raw_single(
                self.raw[t], f"bench-warm-eight-{t}", self.thread_payloads[t][:per_thread]
            ),
        )
        batches = self.warm_batches
        rates: dict[str, list[float]] = {"unnest": [], "recordset": []}
        for i in range(CALIBRATION_ROUNDS):
            self.store_batches(f"bench-warm-batch-{i}", batches)
            self.store_batches(f"bench-warm-batch-{i}b", batches)
            for form in ("unnest", "recordset") if i % 2 == 0 else ("recordset", "unnest"):
                start = time.perf_counter()
                count = self.raw_batches(f"bench-warm-{form}-{i}", batches, form)
                rates[form].append(count / (time.perf_counter() - start))
        medians = {form: statistics.median(r) for form, r in rates.items()}
        self.raw_form = max(medians, key=lambda f: medians[f])
        self.store_read_all()
        self.raw_read_all()
        self.written += w + THREADS * per_thread + 2 * CALIBRATION_ROUNDS * batches * BATCH
        return medians

    def cases(self) -> list[CaseResult]:
        s = self.sizes
        results = []

        single = self.payloads[: s.single]
        results.append(
            measure(
                CaseResult("1 writer, 1 event/tx", 0.70),
                s.rounds,
                s.single,
                lambda r: self.store_single(f"bench-one-{r}-0", single, EVENT_TYPE),
                lambda r: self.raw_single(self.raw[0], f"bench-one-{r}-0", single),
            )
        )
        self.written += s.rounds * s.single

        results.append(
            measure(
                CaseResult(f"1 writer, {BATCH} events/tx", 0.75),
                s.rounds,
                s.batches * BATCH,
                lambda r: self.store_batches(f"bench-batch-{r}-0", s.batches),
                lambda r: self.raw_batches(f"bench-batch-{r}-0", s.batches),
            )
        )
        self.written += s.rounds * s.batches * BATCH

        eight = [payloads[: s.per_thread] for payloads in self.thread_payloads]

        def store_eight(r: int) -> int:
            return run_parallel(
                THREADS,
                lambda t: self.store_single(f"bench-eight-{r}-{t}", eight[t], EVENT_TYPE),
            )[0]

        def raw_eight(r: int) -> int:
            return run_parallel(
                THREADS,
                lambda t: self.raw_single(self.raw[t], f"bench-eight-{r}-{t}", eight[t]),
            )[0]

        # run_parallel times from the barrier; measure() times the whole call,
        # which adds the thread start-up (well under a millisecond) to both sides.
        results.append(
            measure(
                CaseResult(f"{THREADS} writers, 1 event/tx", 0.70),
                s.rounds,
                THREADS * s.per_thread,
                store_eight,
                raw_eight,
            )
        )
        self.written += s.rounds * THREADS * s.per_thread
        return results

    def check_tables(self) -> tuple[int, int]:
        (row,) = self.store.query(
            "bench_count",
            "SELECT (SELECT count(*) FROM utcp.stored_events), "
            "(SELECT count(*) FROM bench.raw_events)",
        )
        store_rows, raw_rows = int(row[0]), int(row[1])
        if not store_rows == raw_rows == self.written:
            raise CountMismatch(
                f"rows written: store {store_rows:,}, raw {raw_rows:,}, "
                f"expected {self.written:,} on both"
            )
        return store_rows, raw_rows

    def read_case(self) -> CaseResult:
        # Fresh statistics on both tables, as autovacuum would give a table of
        # this size: without them the planner may sort instead of walking the
        # (tx_id, position) index.
        self.raw[0].execute("ANALYZE utcp.stored_events")
        self.raw[0].execute("ANALYZE bench.raw_events")
        return measure(
            CaseResult(f"read all, pages of {PAGE:,}", 0.90),
            self.sizes.rounds,
            self.written,
            self.store_read_all,
            self.raw_read_all,
        )

    def registered_case(self) -> CaseResult:
        single = self.payloads[: self.sizes.single]
        return measure(
            CaseResult(f"store, registered {REGISTERED_TYPE} (validated)", None),
            self.sizes.rounds,
            self.sizes.single,
            lambda r: self.store_single(f"bench-registered-{r}-0", single, REGISTERED_TYPE),
            lambda r: self.raw_single(self.raw[0], f"bench-registered-{r}-0", single),
        )


# -- database setup -------------------------------------------------------------------


def prepare_database(dsn: str) -> None:
    """Drop and re-create the benchmark's own database, deploy the schema
    with the project's command, and create bench.raw_events."""
    dbname = conninfo_to_dict(dsn).get("dbname")
    if not dbname or "bench" not in str(dbname):
        raise SystemExit(
            f"refusing to use database {dbname!r}: the benchmark drops and re-creates its "
            "database, so its name must contain 'bench' (set --dsn or $" + DSN_ENV + ")"
        )
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        admin.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                pgsql.Identifier(str(dbname))
            )
        )
    deploy = subprocess.run(
        [sys.executable, "-m", "storectl", "db", "deploy", "--dsn", dsn],
        capture_output=True,
        text=True,
        check=False,
    )
    if deploy.returncode != 0:
        sys.stderr.write(deploy.stdout + deploy.stderr)
        raise SystemExit(f"`eventstore db deploy` failed with exit code {deploy.returncode}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        conn.execute("CREATE TABLE bench.raw_events (LIKE utcp.stored_events INCLUDING ALL)")
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'bench.raw_events'::regclass"
        ).fetchone()
        assert triggers is not None and triggers[0] == 0


def environment(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
        "current_setting('fsync')"
    ).fetchone()
    assert row is not None
    load = os.getloadavg()[0]
    return (
        f"PostgreSQL {row[0]}, synchronous_commit={row[1]}, fsync={row[2]}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), msgspec {msgspec.__version__}; "
        f"load average {load:.2f} at start"
    )


# -- report ---------------------------------------------------------------------------


def _row(cols: Sequence[str]) -> str:
    widths = (44, 9, 11, 11, 6, 12, 7, 4)
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    ).rstrip()


def report_line(r: CaseResult) -> str:
    ratios = r.ratios
    target = "-" if r.target is None else f">={r.target:.2f}"
    met = "-" if r.target is None else ("yes" if r.met() else "NO")
    return _row(
        (
            r.name,
            f"{r.events:,}",
            f"{statistics.median(r.store):,.0f}",
            f"{statistics.median(r.raw):,.0f}",
            f"{statistics.median(ratios):.2f}",
            f"{min(ratios):.2f}-{max(ratios):.2f}",
            target,
            met,
        )
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.append_bench",
        description="The event store's public API against raw psycopg on the same table shape.",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV, DEFAULT_DSN),
        help=f"the benchmark's own database, dropped and re-created (default: ${DSN_ENV} "
        f"or {DEFAULT_DSN})",
    )
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--rounds", type=int, help="alternating rounds per case")
    parser.add_argument("--events", type=int, help="events per round, 1 writer, 1 event/tx")
    parser.add_argument("--batches", type=int, help=f"{BATCH}-event transactions per round")
    parser.add_argument(
        "--per-thread", type=int, help=f"events per writer per round, {THREADS} writers"
    )
    parser.add_argument("--warmup", type=int, help="events per side in the warm-up")
    parser.add_argument(
        "--skip-registered",
        action="store_true",
        help=f"skip the informational {REGISTERED_TYPE} line",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "events", "batches", "per_thread", "warmup"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        rounds=args.rounds or base.rounds,
        single=args.events or base.single,
        batches=args.batches or base.batches,
        per_thread=args.per_thread or base.per_thread,
        warmup=args.warmup or base.warmup,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    started = time.perf_counter()
    print(f"preparing {conninfo_to_dict(args.dsn).get('dbname')} (drop, deploy, raw table)...")
    prepare_database(args.dsn)

    settings = Settings(pool_min_size=THREADS, pool_max_size=THREADS)
    raw = [raw_connect(args.dsn) for _ in range(THREADS)]
    try:
        env = environment(raw[0])
        with EventStore.open(args.dsn, settings) as store:
            bench = Bench(store, raw, sizes)
            print(f"env: {env}")
            print(
                f"sizes: {sizes.rounds} rounds; {sizes.single:,} events (1 writer, 1/tx), "
                f"{sizes.batches} x {BATCH} (1 writer), {THREADS} x {sizes.per_thread:,} "
                f"({THREADS} writers); warm-up {sizes.warmup:,}"
            )
            print("warm-up...", flush=True)
            forms = bench.warm_up()
            results = bench.cases()
            store_rows, raw_rows = bench.check_tables()
            results.append(bench.read_case())
            registered = None if args.skip_registered else bench.registered_case()
    except CountMismatch as exc:
        print(f"COUNT MISMATCH: {exc}", file=sys.stderr)
        return EXIT_COUNT_MISMATCH
    finally:
        for conn in raw:
            conn.close()

    others = ", ".join(f"{f} {v:,.0f} ev/s" for f, v in forms.items())
    print()
    print(f"env: {env}")
    print(
        f"raw side: one autocommit psycopg connection per writer; 1 event/tx: single-row "
        f"INSERT; {BATCH}/tx: {RAW_FORMS[bench.raw_form]} (warm-up: {others})"
    )
    print(
        "rounds alternate store/raw (store first in odd rounds); events/s are medians "
        "over rounds; ratio = median of per-round store/raw, spread = min-max of those"
    )
    print()
    print(_row(("case", "events", "store ev/s", "raw ev/s", "ratio", "spread", "target", "met")))
    for r in results:
        print(report_line(r))
    if registered is not None:
        print(report_line(registered) + "   (information, no target)")
    print()
    print(
        f"counts: written store {store_rows:,} = raw {raw_rows:,} rows; every round of "
        f"every case handled the same number of events on both sides (reads: {bench.written:,}) "
        "- OK"
    )
    met = sum(r.met() for r in results)
    print(
        f"targets met: {met}/{len(results)}; total time {time.perf_counter() - started:.0f} s; "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
