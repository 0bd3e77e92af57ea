"""Server CPU per call of pgbench scripts, from the backend's own counters.

On a shared, loaded machine pgbench's latency measures the queue for a core
as much as the work. This runs each script (``:client_id`` set to 7) on its
own connection, prepared, and reads the backend's CPU time from
``/proc/<pid>/schedstat`` before and after each round: only the time the
backend itself ran. Scripts alternate round by round; the ratio to the first
script is the median of the per-round ratios (adjacent in time, so both saw
the same load). Needs the server on this machine (loopback) and permission
to read its /proc.

    python bench/pgbench/backend_cpu.py DBNAME ROUNDS CALLS on|off script.sql...
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import psycopg


def backend_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def script_sql(path: Path) -> str:
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("--")]
    return "\n".join(lines).replace(":client_id", "7").strip().rstrip(";")


def main(argv: list[str]) -> None:
    db, rounds, calls, sync = argv[0], int(argv[1]), int(argv[2]), argv[3]
    scripts = {Path(p).stem: script_sql(Path(p)) for p in argv[4:]}
    conns: dict[str, tuple[psycopg.Connection[tuple[object, ...]], int]] = {}
    for name, query in scripts.items():
        conn = psycopg.connect(f"host=127.0.0.1 user=root dbname={db}", autocommit=True)
        conn.execute("SELECT set_config('synchronous_commit', %s, false)", (sync,))
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        for _ in range(20):  # plans cached, caches warm
            conn.execute(query, prepare=True)
        conns[name] = (conn, int(str(row[0])))
    cpu: dict[str, list[float]] = {name: [] for name in scripts}
    wall: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(rounds):
        for name, query in scripts.items():
            conn, pid = conns[name]
            t0, w0 = backend_ns(pid), time.perf_counter()
            for _ in range(calls):
                conn.execute(query, prepare=True)
            cpu[name].append((backend_ns(pid) - t0) / calls / 1000)
            wall[name].append((time.perf_counter() - w0) / calls * 1e6)
    first = next(iter(scripts))
    for name in scripts:
        ratios = [a / b for a, b in zip(cpu[name], cpu[first], strict=True)]
        print(
            f"{sync:3} {name:20} backend CPU/call µs: min {min(cpu[name]):6.0f}"
            f" median {statistics.median(cpu[name]):6.0f}"
            f"  ratio to {first} {statistics.median(ratios):4.2f}"
            f"  wall median {statistics.median(wall[name]):6.0f}"
        )
    for conn, _ in conns.values():
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
