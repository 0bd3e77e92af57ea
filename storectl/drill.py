"""The backup, restore and read scale-out drill (``make drill``; issue 9).

    python -m storectl.drill [--keep]

Runs, on PRIVATE PostgreSQL 15 clusters it starts itself (initdb in a
temporary directory, its own ports on 127.0.0.1, as the ``postgres`` OS
user when run as root) and always stops and removes at the end (also on a
failure or Ctrl-C), the commands of docs/runbook.md, "Backups and restores":

a. a primary with WAL archiving through pgBackRest: ``stanza-create``, ``check``;
b. the schema, a first trading session, an anchor saved to a file
   (``eventstore anchor --json``), a projection catch-up, a FULL backup, a
   restore target time, a second session, an INCREMENTAL backup,
   ``verify``, a third session;
c. the disaster: the primary stopped and its data directory deleted;
d. a point-in-time restore to the target, then the checks (below);
e. the logical path: globals first, ``pg_dump -Fc`` / ``pg_restore`` into a
   new cluster, the run book's fix for the log order hazard, the checks;
f. read scale-out: a hot standby (streaming replication) serving
   ``read_all``, ``tail --follow`` and a projection catch-up while writers
   append to the primary.

The checks after a restore: exactly the expected events (by id, none
missing, none extra); ``eventstore verify`` (and ``verify --anchor FILE``
once that command exists); ``eventstore project rebuild`` reports no
differences; a reader at or before the restored head sees every event
appended after the restore exactly once; a checkpoint beyond the restored
log fails loudly (``CheckpointNotInLog``, also through ``tail``).

Every step is timed; a summary ends the run; exit status 1 on any failed check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Final

import psycopg

from eventstore import (
    CheckpointNotInLog,
    EventStore,
    LogOrderHazard,
    NewEvent,
    Settings,
    StoredEvent,
)
from projections import ProjectionRunner
from trading import trading_registry
from trading.events import CashDeposited, PortfolioOpened, Trade

PG_BIN: Final = Path(os.environ.get("DRILL_PG_BIN", "/usr/lib/postgresql/15/bin"))
STANZA: Final = "drill"
DATABASE: Final = "utcp"
#: Transaction ids burnt on the first primary, so that a logical restore
#: into a new cluster (whose counter starts low) does meet the log order hazard.
XID_HEAD_START: Final = 3000
#: Every wait for a server or a reader is bounded by this.
WAIT: Final = 60.0
#: Seconds kept between the restore target and the commits either side of it.
TARGET_GAP: Final = 0.3
SETTINGS: Final = Settings(pool_min_size=1, pool_max_size=4)


#: Appended to a standby's postgresql.auto.conf (see docs/runbook.md).
STANDBY_SETTINGS: Final = {
    "archive_mode": "off",
    "restore_command": "''",
    "recovery_target_time": "''",
    "recovery_target_action": "'pause'",
}
#: ``eventstore project rebuild`` exit status: rows differed (and were swapped in).
EXIT_DIFFERENCES: Final = 3
MOVE_CHECKPOINT: Final = (
    "UPDATE utcp.projection_checkpoints SET checkpoint_tx = %s::xid8, checkpoint_position = %s"
    " WHERE projection = 'trading'"
)
#: How far the cluster's transaction counter is behind the log (the run book's query).
BEHIND: Final = (
    "SELECT max(tx_id)::text::numeric"
    " - pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 1000 FROM utcp.stored_events"
)


class DrillFailed(Exception):
    """A check of the drill failed (or a command it runs)."""


# -- pure helpers (tests/storectl/test_drill.py) ------------------------------------


def pgbackrest_conf(tmp: Path, data: Path, port: int) -> str:
    """The drill's pgbackrest.conf: the run book's, with the drill's paths."""
    return (
        "[global]\n"
        f"repo1-path={tmp / 'repo'}\n"
        "repo1-retention-full=2\n"
        f"log-path={tmp / 'log'}\n"
        f"lock-path={tmp / 'lock'}\n"
        "start-fast=y\n"
        "compress-type=lz4\n"
        "log-level-console=warn\n"
        "\n"
        f"[{STANZA}]\n"
        f"pg1-path={data}\n"
        f"pg1-port={port}\n"
        f"pg1-socket-path={tmp}\n"
        "pg1-user=root\n"
    )


def primary_settings(tmp: Path, port: int, conf: Path) -> dict[str, str]:
    """postgresql.conf settings of the drill's primary (archiving through pgBackRest)."""
    return {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{tmp}'",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'pgbackrest --config={conf} --stanza={STANZA} archive-push %p'",
        "max_wal_senders": "5",
        "hot_standby": "on",
        "fsync": "off",  # a drill: the disaster is a deletion, not a power cut
    }


def choose_target(last_commit: dt.datetime, gap: float = TARGET_GAP) -> dt.datetime:
    """The restore target after ``last_commit`` (the server's time once the
    last commit to keep, and the backup, ended): at least ``gap`` seconds
    later, rounded up to a whole second (pgBackRest picks the backup set by
    its stop time in whole seconds). The drill commits nothing more until
    the server's clock is ``gap`` past it."""
    later = last_commit + dt.timedelta(seconds=gap)
    whole = later.replace(microsecond=0)
    return whole if whole == later else whole + dt.timedelta(seconds=1)


def target_text(when: dt.datetime) -> str:
    """A ``--target`` time pgBackRest and PostgreSQL read unambiguously (UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".") + "+00"


def compare_ids(expected: Sequence[uuid.UUID], found: Sequence[uuid.UUID]) -> list[str]:
    """Problems between the events expected and those found: missing,
    extra, duplicated (empty: exactly the expected ones)."""
    problems: list[str] = []
    want, got = set(expected), set(found)
    if len(found) != len(got):
        problems.append(f"{len(found) - len(got)} duplicated")
    if missing := want - got:
        problems.append(f"{len(missing)} missing (e.g. {sorted(map(str, missing))[0]})")
    if extra := got - want:
        problems.append(f"{len(extra)} extra (e.g. {sorted(map(str, extra))[0]})")
    return problems


def burn_count(behind: int, clients: int = 4) -> int:
    """pgbench transactions per client to burn ``behind`` transaction ids."""
    return max(behind, 0) // clients + 1


# -- running things ---------------------------------------------------------------


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def run(
    argv: Sequence[str],
    *,
    as_postgres: bool = False,
    check: bool = True,
    stdout: Any = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command of the run book, printing it first."""
    full = [*(_as_postgres() if as_postgres else []), *argv]
    if not quiet:
        print(f"    $ {shlex.join(argv)}", flush=True)
    proc = subprocess.run(
        full,
        text=True,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
        timeout=600,
    )
    if check and proc.returncode != 0:
        out = (proc.stdout or "") if stdout is None else ""
        raise DrillFailed(
            f"`{shlex.join(argv)}` exited {proc.returncode}: {(out + proc.stderr).strip()}"
        )
    return proc


def eventstore(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "storectl", *args], check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Cluster:
    """A private PostgreSQL cluster of the drill."""

    name: str
    tmp: Path
    port: int = field(default_factory=free_port)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.tmp / self.name

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/{dbname}"

    def initdb(self, settings: dict[str, str] | None = None) -> None:
        run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "root",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            as_postgres=True,
        )
        self.configure({"listen_addresses": "'127.0.0.1'", **(settings or {})})

    def configure(self, settings: dict[str, str]) -> None:
        base = {"port": str(self.port), "unix_socket_directories": f"'{self.tmp}'"}
        lines = [f"{k} = {v}" for k, v in {**base, **settings}.items()]
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write("\n# utcp drill\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        log = self.tmp / f"{self.name}.log"
        self.running = True  # from here on, stop() cleans up
        run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port}",
                "start",
            ],
            as_postgres=True,
        )

    def stop(self, mode: str = "fast") -> None:
        if not self.running:
            return
        run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            as_postgres=True,
            check=False,
            quiet=True,
        )
        self.running = False

    def sql(self, query: str, dbname: str = DATABASE) -> Any:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(query.encode()).fetchone()
        return None if row is None else row[0]

    def wait_ready(self, dbname: str = DATABASE) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.sql("SELECT 1", dbname)
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# -- the trading sessions -----------------------------------------------------------


@dataclass
class Log:
    """What the drill appended, in commit order per session."""

    sessions: dict[str, list[uuid.UUID]] = field(default_factory=dict)

    def ids(self, *names: str) -> list[uuid.UUID]:
        return [i for n in names for i in self.sessions[n]]


PORTFOLIOS: Final = ("alpha", "beta", "gamma")
SYMBOLS: Final = (
    ("AAPL", Decimal("190.10")),
    ("MSFT", Decimal("410.55")),
    ("BTC-USD", Decimal("43000")),
)


def append_session(
    store: EventStore, name: str, day: int, trades: int, *, opening: bool
) -> list[uuid.UUID]:
    """One trading session through the store's public API: (portfolio
    opens), deposits, and ``trades`` buys and sells per portfolio. Returns
    the event ids, as given to the store."""
    ids: list[uuid.UUID] = []
    start = dt.datetime(2025, 11, 17, 14, 30, tzinfo=dt.UTC) + dt.timedelta(days=day)

    def add(stream: str, type_: str, data: Any, key: str) -> None:
        event_id = uuid.uuid4()
        store.append(
            stream, [NewEvent(type_, data, {"session": name}, event_id)], idempotency_key=key
        )
        ids.append(event_id)

    for p in PORTFOLIOS:
        stream = f"portfolio-{p}"
        if opening:
            add(
                stream,
                "PortfolioOpened",
                PortfolioOpened(
                    portfolio_id=p, name=f"Drill {p}", base_currency="USD", opened_at=start
                ),
                f"{name}:open:{p}",
            )
        add(
            stream,
            "CashDeposited",
            CashDeposited(
                deposit_id=f"{name}-{p}",
                portfolio_id=p,
                amount=Decimal("1000000"),
                occurred_at=start,
            ),
            f"{name}:deposit:{p}",
        )
        for i in range(trades):
            symbol, price = SYMBOLS[i % len(SYMBOLS)]
            trade = Trade(
                trade_id=f"{name}-{p}-{i}",
                portfolio_id=p,
                symbol=symbol,
                side="buy" if i % 3 != 2 else "sell",
                quantity=Decimal("0.5") if symbol == "BTC-USD" else Decimal(10 + i % 7),
                price=price + Decimal(i % 11) / 10,
                fees=Decimal("1.25"),
                executed_at=start + dt.timedelta(minutes=i),
            )
            add(stream, "TradeExecuted", trade, f"{name}:trade:{trade.trade_id}")
    return ids


def read_everything(store: EventStore, count: int, after: str | None = None) -> list[StoredEvent]:
    """Page through read_all until ``count`` events after ``after`` are seen
    (bounded wait) and nothing more comes."""
    seen: list[StoredEvent] = []
    checkpoint = after
    deadline = time.monotonic() + WAIT
    while True:
        page = store.read_all(after=checkpoint, limit=500)
        if page:
            seen.extend(page)
            checkpoint = page[-1].checkpoint
            continue
        if len(seen) >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def server_now(cluster: Cluster) -> dt.datetime:
    now: dt.datetime = cluster.sql("SELECT clock_timestamp()")
    return now


def wait_past(cluster: Cluster, moment: dt.datetime) -> dt.datetime:
    """Wait until the server's clock is past ``moment``; return its time."""
    while (now := server_now(cluster)) <= moment:
        time.sleep(min(0.05, (moment - now).total_seconds() + 0.001))
    return now


# -- the drill ----------------------------------------------------------------------


@dataclass
class Drill:
    tmp: Path
    log: Log = field(default_factory=Log)
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    children: list[subprocess.Popen[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.tmp / "pgbackrest.conf"

    def cluster(self, name: str) -> Cluster:
        c = Cluster(name, self.tmp)
        self.clusters.append(c)
        return c

    def backrest(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args], as_postgres=True
        )

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        print(f"\n== {title}", flush=True)
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except DrillFailed as exc:
            outcome = "FAILED"
            self.failures.append(f"{title}: {exc}")
            raise
        except BaseException:
            outcome = "FAILED"
            raise
        finally:
            seconds = time.monotonic() - started
            self.timings.append((title, seconds, outcome))
            print(f"   ({outcome}, {seconds:.1f} s)", flush=True)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        print(f"   {'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failures.append(f"{what}{': ' + detail if detail else ''}")

    # a ---------------------------------------------------------------------------

    def primary_with_archiving(self) -> Cluster:
        primary = self.cluster("primary")
        self.conf.write_text(pgbackrest_conf(self.tmp, primary.data, primary.port))
        for sub in ("repo", "log", "lock"):
            (self.tmp / sub).mkdir()
        chown_postgres(self.tmp)
        primary.initdb(primary_settings(self.tmp, primary.port, self.conf))
        primary.start()
        self.backrest("stanza-create")
        self.backrest("check")
        return primary

    # b ---------------------------------------------------------------------------

    def sessions_and_backups(self, primary: Cluster) -> dict[str, Any]:
        dsn = primary.dsn()
        eventstore("db", "deploy", "--dsn", dsn)
        burn = self.tmp / "burn.sql"
        burn.write_text("SELECT pg_current_xact_id();\n")
        run(
            [
                "pgbench",
                "-n",
                "-f",
                str(burn),
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                str(burn_count(XID_HEAD_START)),
                dsn,
            ]
        )
        out: dict[str, Any] = {}
        with EventStore.open(dsn, SETTINGS, registry=trading_registry()) as store:
            self.log.sessions["s1"] = append_session(store, "s1", 0, 30, opening=True)
            s1 = read_everything(store, len(self.log.sessions["s1"]))
            out["s1_head"] = s1[-1].checkpoint
            out["s1_middle"] = s1[len(s1) // 2].checkpoint
            print(f"   session 1: {len(s1)} events, head {out['s1_head']}")
            anchor = self.tmp / "anchor-session1.json"
            with open(anchor, "w") as f:
                run([sys.executable, "-m", "storectl", "anchor", "--json", "--dsn", dsn], stdout=f)
            print(f"   anchor saved: {anchor.read_text().strip()[:100]}…")
            out["anchor"] = anchor
            eventstore("project", "catch-up", "--dsn", dsn)
            self.backrest("--type=full", "backup")
            # The target: in a gap of at least 2 * TARGET_GAP between the last
            # commit of session 1 (and of the backup) and the first of session 2.
            target = choose_target(server_now(primary))
            wait_past(primary, target + dt.timedelta(seconds=TARGET_GAP))
            out["target"] = target
            print(f"   restore target: {target_text(target)}")
            self.log.sessions["s2"] = append_session(store, "s2", 1, 20, opening=False)
            s2 = read_everything(store, len(self.log.sessions["s2"]), out["s1_head"])
            first_s2 = primary.sql(
                "SELECT min(created_at) FROM utcp.stored_events WHERE metadata->>'session' = 's2'"
            )
            self.check(
                "session 2 committed after the target",
                first_s2 > target,
                f"first commit {first_s2.isoformat()}",
            )
            out["s2_checkpoint"] = s2[-1].checkpoint
            self.backrest("--type=incr", "backup")
            self.backrest("verify")
            self.log.sessions["s3"] = append_session(store, "s3", 2, 10, opening=False)
            s3 = read_everything(store, len(self.log.sessions["s3"]), out["s2_checkpoint"])
            out["s3_checkpoint"] = s3[-1].checkpoint
        primary.sql("SELECT pg_switch_wal()")
        self.backrest("check")  # waits until the last WAL segment is archived
        run(["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", "info"], as_postgres=True)
        return out

    # checks after a restore ------------------------------------------------------------

    def checks(
        self, label: str, cluster: Cluster, expected: list[uuid.UUID], state: dict[str, Any]
    ) -> None:
        dsn = cluster.dsn()
        with EventStore.open(dsn, SETTINGS, registry=trading_registry()) as store:
            events = read_everything(store, len(expected))
            problems = compare_ids(expected, [e.event_id for e in events])
            self.check(
                f"{label}: exactly the {len(expected)} expected events",
                not problems,
                "; ".join(problems) or f"{len(events)} events",
            )
        verify = eventstore("verify", "--dsn", dsn, check=False)
        self.check(f"{label}: eventstore verify", verify.returncode == 0, verify.stdout.strip())
        has_anchor = "--anchor" in eventstore("verify", "--help").stdout
        if has_anchor:
            anchored = eventstore(
                "verify", "--anchor", str(state["anchor"]), "--dsn", dsn, check=False
            )
            self.check(
                f"{label}: eventstore verify --anchor (saved before the disaster)",
                anchored.returncode == 0,
                anchored.stdout.strip(),
            )
        else:
            print("   skip `eventstore verify --anchor FILE`: not in this version of eventstore")
        rebuilt = eventstore("project", "rebuild", "--json", "--dsn", dsn, check=False)
        report = (
            json.loads(rebuilt.stdout.strip().splitlines()[-1]) if rebuilt.stdout.strip() else {}
        )
        self.check(
            f"{label}: project rebuild equals the log (no differences)",
            rebuilt.returncode == 0 and report.get("ok") is True,
            f"{report.get('events')} events, differences {len(report.get('differences', []))}"
            if report
            else rebuilt.stderr.strip(),
        )
        self.readers(label, cluster, events, state)

    def readers(
        self, label: str, cluster: Cluster, events: list[StoredEvent], state: dict[str, Any]
    ) -> None:
        dsn = cluster.dsn()
        head, middle = events[-1], events[len(events) // 2]
        with EventStore.open(dsn, SETTINGS, registry=trading_registry()) as store:
            new = append_session(store, f"after-{label}", 3, 4, opening=False)
            self.log.sessions[f"after-{label}"] = new
            for name, start in (("at the restored head", head), ("before the head", middle)):
                want = [e.event_id for e in events[events.index(start) + 1 :]] + new
                seen = read_everything(store, len(want), start.checkpoint)
                got = [e.event_id for e in seen]
                self.check(
                    f"{label}: a reader {name} sees every new event once, in order",
                    got == want,
                    f"{len(got)} read, {len(want)} expected",
                )
            for name in ("s2_checkpoint", "s3_checkpoint"):
                try:
                    store.read_all(after=state[name])
                    self.check(
                        f"{label}: a checkpoint beyond the log ({name}) fails loudly",
                        False,
                        "read_all returned a page",
                    )
                except CheckpointNotInLog as exc:
                    self.check(
                        f"{label}: a checkpoint beyond the log ({name}) fails loudly",
                        "project rebuild" in str(exc),
                        type(exc).__name__,
                    )
        tail = eventstore("tail", "--after", state["s3_checkpoint"], "--dsn", dsn, check=False)
        self.check(
            f"{label}: `eventstore tail --after` a lost checkpoint exits 1 in one line",
            tail.returncode == 1 and len(tail.stderr.strip().splitlines()) == 1,
            tail.stderr.strip()[:120],
        )
        self.projection_beyond(label, dsn, state["s3_checkpoint"])

    def projection_beyond(self, label: str, dsn: str, lost: str) -> None:
        """A projection whose checkpoint is beyond the log (one kept outside
        the restored database, say; simulated by moving its checkpoint row to
        a lost event): catch-up fails loudly, naming the way out, and the way
        out, `eventstore project rebuild`, brings it back (the checkpoint row
        is put back only when it does not)."""
        tx, pos = lost.split("/")
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT checkpoint_tx::text, checkpoint_position FROM utcp.projection_checkpoints"
                " WHERE projection = 'trading'"
            ).fetchone()
            conn.execute(MOVE_CHECKPOINT, (tx, int(pos)))
        try:
            caught = eventstore("project", "catch-up", "--dsn", dsn, check=False)
            lines = caught.stderr.strip().splitlines()
            self.check(
                f"{label}: a projection beyond the log: catch-up fails loudly, naming the way out",
                caught.returncode != 0 and len(lines) == 1 and "project rebuild" in lines[0],
                f"exit {caught.returncode}: {caught.stderr.strip()[:100]}",
            )
            rebuilt = eventstore("project", "rebuild", "--dsn", dsn, check=False)
            caught = eventstore("project", "catch-up", "--dsn", dsn, check=False)
            outcome = (rebuilt.stderr + caught.stderr).strip()
            back = caught.returncode == 0 and rebuilt.returncode in (0, EXIT_DIFFERENCES)
            self.check(f"{label}: `eventstore project rebuild` brings it back", back, outcome)
            if back:
                row = None  # the rebuild left a checkpoint that is in the log: keep it
        finally:
            if row is not None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(MOVE_CHECKPOINT, (row[0], row[1]))

    # c + d -------------------------------------------------------------------------------

    def disaster(self, primary: Cluster) -> None:
        primary.stop("immediate")
        shutil.rmtree(primary.data)
        self.check("primary stopped and its data directory deleted", not primary.data.exists())

    def point_in_time_restore(self, primary: Cluster, state: dict[str, Any]) -> Cluster:
        restored = self.cluster("restored")
        restored.port = primary.port  # the old primary's place
        restored.data.mkdir(mode=0o700)
        chown_postgres(restored.data)
        self.backrest(
            f"--pg1-path={restored.data}",
            "--type=time",
            f"--target={target_text(state['target'])}",
            "--target-action=promote",
            "restore",
        )
        restored.start()
        deadline = time.monotonic() + WAIT
        while restored.sql("SELECT pg_is_in_recovery()", "postgres"):
            if time.monotonic() > deadline:
                raise DrillFailed("the restored cluster did not promote")
            time.sleep(0.1)
        return restored

    # e ----------------------------------------------------------------------------------

    def logical(self, source: Cluster, state: dict[str, Any]) -> Cluster:
        globals_sql, dump = self.tmp / "globals.sql", self.tmp / "utcp.dump"
        src = ["-h", "127.0.0.1", "-p", str(source.port), "-U", "root"]
        run(["pg_dumpall", *src, "--globals-only", "-f", str(globals_sql)])
        run(["pg_dump", *src, "-Fc", "-d", DATABASE, "-f", str(dump)])
        expected = self.source_ids(source)
        target = self.cluster("logical")
        target.initdb()
        target.start()
        dst = ["-h", "127.0.0.1", "-p", str(target.port), "-U", "root"]
        roles = run(["psql", "-X", "-q", *dst, "-d", "postgres", "-f", str(globals_sql)])
        errors = [line for line in roles.stderr.splitlines() if "ERROR" in line]
        self.check(
            "globals restored (the only error: the installing superuser exists)",
            all('role "root" already exists' in e for e in errors),
            "; ".join(errors),
        )
        run(["pg_restore", *dst, "--create", "--exit-on-error", "-d", "postgres", str(dump)])
        # The run book: the store refuses appends until the counter passed the log.
        status = eventstore("status", "--dsn", target.dsn(), check=False)
        self.check(
            "status reports the log order hazard (exit 1)",
            status.returncode == 1,
            status.stdout.strip().splitlines()[-1] if status.stdout.strip() else "",
        )
        quiet = logging.getLogger("eventstore")  # it logs the hazard it refuses for
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        with EventStore.open(target.dsn(), SETTINGS, registry=trading_registry()) as store:
            try:
                store.append(
                    "portfolio-alpha",
                    [
                        NewEvent(
                            "CashDeposited",
                            CashDeposited(
                                deposit_id="refused",
                                portfolio_id="alpha",
                                amount=Decimal(1),
                                occurred_at=dt.datetime.now(dt.UTC),
                            ),
                        )
                    ],
                )
                self.check("an append is refused (LogOrderHazard)", False, "it was written")
            except LogOrderHazard:
                self.check("an append is refused (LogOrderHazard)", True)
        quiet.setLevel(level)
        behind = int(run(["psql", "-X", target.dsn(), "-Atc", BEHIND]).stdout.strip())
        burn = self.tmp / "burn.sql"
        run(
            [
                "pgbench",
                "-n",
                "-f",
                str(burn),
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                str(burn_count(behind)),
                target.dsn(),
            ]
        )
        status = eventstore("status", "--dsn", target.dsn(), check=False)
        self.check(
            "after the run book's fix, status shows no hazard",
            status.returncode == 0,
            f"{behind} transaction ids burnt",
        )
        self.checks("logical", target, expected, state)
        return target

    @staticmethod
    def source_ids(cluster: Cluster) -> list[uuid.UUID]:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            rows = conn.execute("SELECT event_id FROM utcp.stored_events").fetchall()
        return [r[0] for r in rows]

    # f ----------------------------------------------------------------------------------

    def scale_out(self, primary: Cluster) -> None:
        standby = self.cluster("standby")
        run(
            [
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "root",
                "-D",
                str(standby.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            as_postgres=True,
        )
        # pgBackRest's restore left its recovery settings in the primary's
        # postgresql.auto.conf, and pg_basebackup copied them: a standby
        # must not stop at that old target.
        standby.configure(STANDBY_SETTINGS)
        standby.start()
        standby.wait_ready()
        # The projection's tables cannot be written on a standby: it catches up
        # from the standby's log into a database of its own on the primary.
        readmodel = primary.dsn("utcp_readmodel")
        eventstore("db", "deploy", "--dsn", readmodel)
        before = len(self.source_ids(primary))
        writers, per_writer = len(PORTFOLIOS), 50
        expected = before + writers * per_writer
        stop = threading.Event()
        tail_lines: list[str] = []
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "storectl",
                "tail",
                "--follow",
                "--json",
                "--poll-interval",
                "0.05",
                "--dsn",
                standby.dsn(),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children.append(tail)  # killed by cleanup() if this step fails
        assert tail.stdout is not None
        tail_out = tail.stdout

        def follow() -> None:
            for line in tail_out:
                tail_lines.append(line)
                if len(tail_lines) >= expected:
                    break

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                with EventStore.open(primary.dsn(), SETTINGS, registry=trading_registry()) as store:
                    for i in range(per_writer):
                        p = PORTFOLIOS[n]
                        store.append(
                            f"portfolio-{p}",
                            [
                                NewEvent(
                                    "CashDeposited",
                                    CashDeposited(
                                        deposit_id=f"scale-{p}-{i}",
                                        portfolio_id=p,
                                        amount=Decimal(1),
                                        occurred_at=dt.datetime.now(dt.UTC),
                                    ),
                                )
                            ],
                        )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        with EventStore.open(standby.dsn(), SETTINGS, registry=trading_registry()) as replica:
            standby_seen: list[StoredEvent] = []
            checkpoint: str | None = None
            for t in threads:
                t.start()
            with ProjectionRunner(replica, readmodel) as runner:
                if not runner.acquire(stop):
                    raise DrillFailed("the read model projection is locked")
                deadline = time.monotonic() + WAIT / 2
                while len(standby_seen) < expected and time.monotonic() < deadline:
                    page = replica.read_all(after=checkpoint, limit=50)
                    if page:
                        standby_seen.extend(page)
                        checkpoint = page[-1].checkpoint
                    else:
                        time.sleep(0.02)
                    runner.catch_up()
                for t in threads:
                    t.join()
                runner.catch_up()
                projected = runner.checkpoint()
        follower.join(WAIT / 6)
        tail.send_signal(signal.SIGTERM)
        tail.wait(10)
        self.check("writers appended to the primary", not errors, "; ".join(map(str, errors)))
        with EventStore.open(primary.dsn(), SETTINGS, registry=trading_registry()) as store:
            primary_seen = read_everything(store, expected)
        primary_ids = [e.event_id for e in primary_seen]
        self.check(
            "standby read_all: every event once, in the primary's order",
            [e.event_id for e in standby_seen] == primary_ids,
            f"{len(standby_seen)} on the standby, {len(primary_ids)} on the primary",
        )
        tail_ids = [uuid.UUID(json.loads(line)["event_id"]) for line in tail_lines]
        self.check(
            "standby tail --follow: every event once, in the primary's order",
            tail_ids == primary_ids,
            f"{len(tail_ids)} lines",
        )
        self.check(
            "projection caught up from the standby to the primary's head",
            projected == primary_seen[-1].checkpoint,
            projected,
        )
        eventstore("project", "catch-up", "--dsn", primary.dsn())
        same = compare_tables(primary.dsn(), readmodel)
        self.check("its tables equal the primary's own projection", not same, "; ".join(same))
        replayed = standby.sql("SELECT pg_last_wal_replay_lsn()::text", "postgres")
        written = primary.sql("SELECT pg_current_wal_lsn()::text", "postgres")
        snapshots = [
            c.sql("SELECT pg_current_snapshot()::text", "postgres") for c in (primary, standby)
        ]
        print(
            f"   WAL: primary at {written}, standby replayed {replayed}; "
            f"snapshots: primary {snapshots[0]}, standby {snapshots[1]}"
        )

    # ---------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for c in reversed(self.clusters):
            try:
                c.stop("immediate")
            except Exception as exc:  # keep cleaning up
                print(f"drill: could not stop {c.name}: {exc}", file=sys.stderr)


def compare_tables(dsn_a: str, dsn_b: str) -> list[str]:
    """Differences between the projection tables of two databases."""
    problems = []
    for table, order in (
        ("portfolios", "portfolio_id"),
        ("positions", "portfolio_id, symbol"),
        ("trades", "trade_id"),
    ):
        query = f"SELECT * FROM utcp.{table} ORDER BY {order}".encode()
        with psycopg.connect(dsn_a) as a, psycopg.connect(dsn_b) as b:
            rows_a, rows_b = a.execute(query).fetchall(), b.execute(query).fetchall()
        if rows_a != rows_b:
            problems.append(f"{table}: {len(rows_a)} rows vs {len(rows_b)}")
    return problems


def chown_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        for name in [
            root,
            *(os.path.join(root, d) for d in dirs),
            *(os.path.join(root, f) for f in files),
        ]:
            os.chown(name, pw.pw_uid, pw.pw_gid)


def require_tools() -> None:
    """pgBackRest (installed with apt-get when missing and run as root, like
    bootstrap installs sqitch), and PostgreSQL 15's server binaries."""
    if shutil.which("pgbackrest") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("drill: installing pgbackrest (apt-get)", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-qq"], env=env)
            run(["apt-get", "install", "-y", "-qq", "pgbackrest"], env=env)
        if shutil.which("pgbackrest") is None:
            raise DrillFailed(
                "pgbackrest is not installed and cannot be installed from here: run "
                "`sudo apt-get install -y pgbackrest` (Debian/Ubuntu)"
            )
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).exists():
            raise DrillFailed(f"{PG_BIN / tool} is missing: install postgresql-15")
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup", "psql", "pgbench"):
        if shutil.which(tool) is None:
            raise DrillFailed(f"{tool} is missing: install postgresql-client-15")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drill", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (clusters stopped)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="utcp-drill-"))
    tmp.chmod(0o755)
    drill = Drill(tmp)
    print(f"drill: working in {tmp}")
    try:
        with drill.step("setup: tools"):
            require_tools()
        with drill.step("a. primary with WAL archiving through pgBackRest"):
            primary = drill.primary_with_archiving()
        with drill.step("b. sessions, anchor, projection, full + incremental backups, verify"):
            state = drill.sessions_and_backups(primary)
        with drill.step("c. disaster: primary stopped, data directory deleted"):
            drill.disaster(primary)
        with drill.step("d. point-in-time restore to the target"):
            restored = drill.point_in_time_restore(primary, state)
        with drill.step("d. checks after the point-in-time restore"):
            drill.checks("pitr", restored, drill.log.ids("s1"), state)
        with drill.step("e. logical path: globals, pg_dump, pg_restore, run book fix, checks"):
            drill.logical(restored, state)
        with drill.step("f. read scale-out: hot standby under writers"):
            drill.scale_out(restored)
    except DrillFailed as exc:
        if not any(str(exc) in f for f in drill.failures):
            drill.failures.append(str(exc))
        print(f"drill: FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        drill.failures.append("interrupted")
        print("drill: interrupted", file=sys.stderr)
    except Exception as exc:
        drill.failures.append(f"{type(exc).__name__}: {exc}")
        print(f"drill: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        drill.cleanup()
        if args.keep:
            print(f"drill: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n== summary")
    for title, seconds, outcome in drill.timings:
        print(f"   {seconds:6.1f} s  {outcome:6}  {title}")
    print(f"   {time.monotonic() - started:6.1f} s  total")
    for note in drill.notes:
        print(f"drill: note: {note}")
    if drill.failures:
        print(f"drill: {len(drill.failures)} check(s) FAILED:")
        for failure in drill.failures:
            print(f"   - {failure}")
        return 1
    print("drill: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
