"""Tool calls over HTTP against the same work through the library.

    python -m bench.http_bench [--dsn DSN] [--calls N] [--quick]
    make bench-http

Starts ``eventstore serve`` in this process on a loopback port (uvicorn in
a thread, as the tests do) and measures, at 1 and 16 concurrent clients
(threads, each with its own kept-alive connection, storectl.service.client):

* ``storage.save_event``: a new assistant event per call (a write);
* ``storage.get_trade``: the latest revision of a setup with its event (a read);

then the same calls through the library in this process (``SetupStore``:
``save_event``, ``get_setup``; same threads, one store with the service's
pool size). Prints calls/s, p50 and p99 latency per side and the ratio of
HTTP to library throughput. A benchmark, not a test: it fails (exit 1) only
when a call fails or a side did not write what it should.

The database is the benchmark's own: ``--dsn``, else
``$EVENTSTORE_BENCH_DSN`` with its database renamed ``utcp_http_bench``,
else ``postgresql://root@127.0.0.1:5432/utcp_http_bench``; every run drops
it, re-creates it and deploys the schema. It refuses a database whose name
does not contain ``bench``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore import EventStore, Settings
from storectl.service import ServiceSettings, build_app, running
from storectl.service.client import ToolClient
from storectl.service.keys import add_key
from trading import trading_registry
from trading.setups import AssistantEvent, SetupStore, TradeSetup

DEFAULT_DSN: Final = "postgresql://root@127.0.0.1:5432/utcp_http_bench"
CONCURRENCY: Final = (1, 16)
POOL: Final = 16


@dataclass(frozen=True)
class Result:
    case: str
    clients: int
    side: str
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def bench_dsn(given: str | None) -> str:
    if given:
        dsn = given
    elif os.environ.get("EVENTSTORE_BENCH_DSN"):
        dsn = make_conninfo(os.environ["EVENTSTORE_BENCH_DSN"], dbname="utcp_http_bench")
    else:
        dsn = DEFAULT_DSN
    name = conninfo_to_dict(dsn).get("dbname") or ""
    if "bench" not in str(name):
        raise SystemExit(f"http_bench: refusing database {name!r}: its name must contain 'bench'")
    return dsn


def prepare_database(dsn: str) -> None:
    """Drop, re-create and deploy the benchmark's own database."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    subprocess.run(
        [sys.executable, "-m", "storectl", "db", "deploy", "--dsn", dsn],
        check=True,
        capture_output=True,
    )


def event(tag: str, n: int) -> dict[str, Any]:
    return {
        "id": f"{tag}-{n}",
        "symbol": "BENCH",
        "type": "signal.generated",
        "time": "2026-12-01T10:30:00.123456Z",
        "payload": {"score": 0.75, "direction": "long", "n": n},
    }


def run_threads(clients: int, calls: int, work: Callable[[int, int], None]) -> Result:
    """``calls`` calls of ``work(thread, i)`` spread over ``clients`` threads."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def worker(t: int) -> None:
        mine = latencies[t]
        barrier.wait()
        try:
            for i in range(t, calls, clients):
                started = time.perf_counter()
                work(t, i)
                mine.append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x for mine in latencies for x in mine]
    return Result("", clients, "", len(flat), seconds, flat)


def measure(dsn: str, calls: int) -> list[Result]:
    results: list[Result] = []
    registry = trading_registry()
    with EventStore.open(
        dsn, Settings.from_env(pool_min_size=1, pool_max_size=POOL), registry=registry
    ) as store:
        key = add_key(dsn, f"bench-{uuid.uuid4().hex[:8]}", "writer")[1]
        setups = SetupStore(store)
        signal = msgspec_event(event("seed", 0))
        setups.save_setup(
            TradeSetup(
                id="bench-setup",
                symbol="BENCH",
                direction="long",
                entry=100.0,
                stop=98.0,
                targets=[103.0, 105.0],
                strategy_id="bench",
                created_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            ),
            None,
            signal,
        )
        settings = ServiceSettings(
            dsn=dsn, pool_size=POOL, threads=POOL, key_cache_seconds=300, shutdown_grace=5
        )
        with running(build_app(settings), settings) as url:
            for clients in CONCURRENCY:
                http = [ToolClient(url, key) for _ in range(clients)]
                try:
                    # warm up: connections, the key cache, the service's pool
                    work = cases(http, setups, clients)
                    run_threads(clients, clients * 5, work[1][1])
                    run_threads(clients, clients * 5, work[1][2])
                    for case, http_work, lib_work in work:
                        for side, job in (("http", http_work), ("library", lib_work)):
                            done = run_threads(clients, calls, job)
                            n, secs, lat = done.calls, done.seconds, done.latencies
                            results.append(Result(case, clients, side, n, secs, lat))
                finally:
                    for client in http:
                        client.close()
        written = store.read_stream("assistant-BENCH", limit=1_000_000)
        expected = 1 + 2 * calls * len(CONCURRENCY)  # the seed's event lives in its setup stream
        if len(written) != expected - 1:
            raise SystemExit(
                f"http_bench: {len(written)} events in assistant-BENCH, expected {expected - 1}"
            )
    return results


def msgspec_event(data: dict[str, Any]) -> AssistantEvent:
    import msgspec  # noqa: PLC0415

    return msgspec.convert(data, AssistantEvent, strict=False)


def read_http(client: ToolClient) -> None:
    client.call_raw("storage.get_trade", {"id": "bench-setup"})


def read_lib(setups: SetupStore) -> None:
    if setups.get_setup("bench-setup") is None:
        raise SystemExit("http_bench: the seeded setup is missing")


def cases(
    http: list[ToolClient], setups: SetupStore, clients: int
) -> list[tuple[str, Callable[[int, int], None], Callable[[int, int], None]]]:
    tag_http = f"h{clients}-{uuid.uuid4().hex[:6]}"
    tag_lib = f"l{clients}-{uuid.uuid4().hex[:6]}"

    def save_http(t: int, i: int) -> None:
        http[t].call_raw("storage.save_event", {"event": event(tag_http, i)})

    def save_lib(t: int, i: int) -> None:
        setups.save_event(msgspec_event(event(tag_lib, i)))

    return [
        ("storage.save_event", save_http, save_lib),
        ("storage.get_trade", lambda t, i: read_http(http[t]), lambda t, i: read_lib(setups)),
    ]


def report(results: Sequence[Result]) -> str:
    lines = [
        "| tool | clients | side | calls/s | p50 ms | p99 ms | HTTP / library |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    by_key = {(r.case, r.clients, r.side): r for r in results}
    for r in results:
        ratio = ""
        if r.side == "http":
            lib = by_key[(r.case, r.clients, "library")]
            ratio = f"{r.rate / lib.rate:.2f}"
        lines.append(
            f"| {r.case} | {r.clients} | {r.side} | {r.rate:,.0f} | "
            f"{r.percentile(0.5):.2f} | {r.percentile(0.99):.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_bench", description=__doc__)
    parser.add_argument("--dsn", help=f"the benchmark's own database (default {DEFAULT_DSN})")
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and side")
    parser.add_argument("--quick", action="store_true", help="300 calls per case and side")
    args = parser.parse_args(argv)
    calls = 300 if args.quick else args.calls
    dsn = bench_dsn(args.dsn)
    prepare_database(dsn)
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    load = os.getloadavg()
    print(
        f"http_bench: {calls} calls per case and side; "
        f"PostgreSQL {version[0] if version else '?'}; {os.cpu_count()} CPUs; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    print(report(measure(dsn, calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
