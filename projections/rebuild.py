"""Rebuild a projection from the start of the log, without downtime.

1. Shadow tables (``utcp.trades__rebuild``, …, created ``LIKE`` the live
   ones by ``utcp.rebuild_prepare``, owned by the schema's owner and
   granted like the live ones) are filled from the start of the log by a
   runner with its own checkpoint row (``<name>__rebuild``) and its own
   lease, while the live
   worker keeps running and readers keep reading the live tables. It
   chases the head in at most CHASE_PASSES passes, each ending at the head
   as it was when the pass began, so busy writers cannot keep it going.
2. The rebuild then asks for the live projection's lease: the live
   worker hands it over after its current batch and waits as a standby
   (:meth:`ProjectionRunner.take_over`). Waiting is bounded by
   ``lock_timeout``.
3. Holding it, whichever of the two is behind is brought to the other's
   checkpoint, and the tables are compared row by row, every column, at
   that one checkpoint. Every differing row is reported: a difference
   means a bug, a changed rule, or a live table someone edited.
4. Unless ``dry_run``: one transaction (``utcp.rebuild_swap``) renames
   the live tables away, the shadow tables in, copies the rebuild's
   checkpoint into the live row, drops the old tables and gives the new
   indexes (and the constraints they back) the canonical names of
   ``sqitch/deploy/projections.sql``.
   A reader sees either the old tables or the new ones (it may wait for
   the swap's lock for a moment), never an empty or half-built table.
   The swap happens even when rows differ: the rebuild applies the
   current rules to the whole log, so it is the truth; the differences
   are reported so an operator can see what changed.
5. The lease goes back; the live worker resumes from the same checkpoint.

The projector creates and owns nothing in schema utcp: every DDL step is a
SECURITY DEFINER function of the schema's owner, on the fixed table set.
Each waits for other sessions' table locks in short tries (SWAP_LOCK_TIMEOUT)
for at most SWAP_WAIT, then fails naming the sessions that hold them.

On any failure (and after a dry run) the shadow tables and the rebuild's
checkpoint row are removed; the live tables are untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from eventstore import (
    Checkpoint,
    CheckpointNotInLog,
    EventStore,
    EventStoreError,
    RawStoredEvent,
)

from . import sql
from .errors import ProjectionError, mapped_errors
from .runner import ProjectionRunner
from .sql import LIVE, Tables, shadow_tables
from .status import lease_sessions, rebuild_checkpoint_name
from .trading import TradingProjection

__all__ = [
    "PROJECTIONS",
    "RebuildError",
    "RebuildProgress",
    "RebuildReport",
    "RowDifference",
    "rebuild",
]

log = logging.getLogger("projections")

#: The projections a rebuild knows, by name.
PROJECTIONS: Final = {TradingProjection.name: TradingProjection}
DEFAULT_BATCH: Final = 1000
DEFAULT_LOCK_TIMEOUT: Final = 60.0
#: Each try of the swap waits this long for readers' locks: while it waits,
#: its queued lock holds new readers back too, so a try is short...
SWAP_LOCK_TIMEOUT: Final = 0.1
#: ...and the swap tries again, letting readers through in between, for
#: up to this long in all.
SWAP_WAIT: Final = 30.0
#: Passes of the unlocked rebuild towards the head before pausing the live
#: worker. While the rebuild reads faster than writers append, each pass is
#: shorter than the last and the pause (the sync) is short; when it does
#: not, the sync catches up under the lock and the pause is longer, but the
#: rebuild still ends.
CHASE_PASSES: Final = 3
#: The shadow tables' suffix (utcp.trades__rebuild, …).
SHADOW_SUFFIX: Final = "rebuild"

T = TypeVar("T")

#: ``progress(phase, done, total)``: phase "rebuild" (events read so far, of
#: about ``total``), "pause", "sync" (events read so far), "compare", "swap".
RebuildProgress = Callable[[str, int, int], None]


class RebuildError(EventStoreError):
    """The rebuild could not finish; nothing was swapped."""


class RowDifference(msgspec.Struct, frozen=True):
    """A row that is not the same in the live and the rebuilt table
    (``None``: the row is missing on that side)."""

    table: str
    key: dict[str, Any]
    live: dict[str, Any] | None
    rebuilt: dict[str, Any] | None

    def columns(self) -> list[str]:
        """The columns that differ (every column when a side is missing)."""
        if self.live is None or self.rebuilt is None:
            return list(sql.COLUMNS[self.table])
        return [c for c in sql.COLUMNS[self.table] if self.live.get(c) != self.rebuilt.get(c)]


class RebuildReport(msgspec.Struct, frozen=True):
    name: str
    #: The checkpoint both sets of tables were compared at (and swapped at).
    checkpoint: str
    #: Events the rebuild read from the log.
    events: int
    differences: list[RowDifference]
    #: Rows per table in the rebuilt tables.
    rows: dict[str, int]
    swapped: bool
    dry_run: bool
    seconds: float
    #: How long the live worker was paused (the lock held by the rebuild).
    paused_seconds: float
    #: Set when the live projection could not be brought to the checkpoint
    #: (an event it cannot apply): the tables were not compared.
    live_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.differences and self.live_error is None


def rebuild(
    store: EventStore,
    dsn: str,
    name: str = "trading",
    *,
    progress: RebuildProgress | None = None,
    batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
) -> RebuildReport:
    """Rebuild projection ``name`` into shadow tables, compare, and swap
    them in (module docstring). ``lock_timeout``: how long to wait for the
    live worker to pause (None: no limit). A failure of the rebuild's own
    connections is an EventStoreError too (projections.errors.mapped_errors)."""
    with mapped_errors("rebuild", name):
        return _rebuild(
            store,
            dsn,
            name,
            progress=progress,
            batch_size=batch_size,
            dry_run=dry_run,
            lock_timeout=lock_timeout,
        )


def _rebuild(
    store: EventStore,
    dsn: str,
    name: str,
    *,
    progress: RebuildProgress | None,
    batch_size: int,
    dry_run: bool,
    lock_timeout: float | None,
) -> RebuildReport:
    factory = PROJECTIONS.get(name)
    if factory is None:
        raise RebuildError(
            f"unknown projection {name!r} (known: {', '.join(sorted(PROJECTIONS))})",
            operation="rebuild",
        )
    started = time.monotonic()
    shadow = shadow_tables(SHADOW_SUFFIX)
    say: RebuildProgress = progress if progress is not None else _quiet
    builder = ProjectionRunner(
        store,
        dsn,
        factory(),
        tables=shadow,
        checkpoint_name=rebuild_checkpoint_name(name),
        batch_size=batch_size,
        channel="",
    )
    live = ProjectionRunner(
        store, dsn, factory(), tables=LIVE, checkpoint_name=name, batch_size=batch_size, channel=""
    )
    if not builder.acquire(_once()):
        raise RebuildError(
            f"projection {name!r}: another rebuild is running ({_holder(store, builder.name)})",
            operation="rebuild",
        )
    swapped = False
    paused_at: float | None = None
    try:
        _prepare(builder.connection, name, builder.name)
        start = Checkpoint.START
        lag = (start.tx_param, start.position)
        row = builder.connection.execute(sql.STATUS_LAG, lag).fetchone()
        total = int(row[0]) if row else 0
        done = 0
        phase = "rebuild"

        def advance(count: int, _: RawStoredEvent) -> None:
            nonlocal done
            done += count
            say(phase, done, max(total, done))

        say("rebuild", 0, total)
        # Chase the head in passes, each to the head as it was when the pass
        # began: writers appending faster than the rebuild reads cannot keep
        # it from ever pausing the live worker; what they add meanwhile is
        # applied in the sync, under the lock.
        for _ in range(CHASE_PASSES):
            head = builder.head()
            if head == builder.checkpoint():
                break
            builder.catch_up(until=head, progress=advance)
        say("rebuild", done, done)

        say("pause", 0, 0)
        if not live.take_over(lock_timeout):
            raise RebuildError(
                f"projection {name!r}: the live worker ({_holder(store, name)}) did not "
                f"pause within {lock_timeout} s; nothing was swapped (a `project run` worker "
                "steps back between batches, a `project catch-up` only when it is done: "
                "try again, or pass a longer --lock-timeout)",
                operation="rebuild",
            )
        paused_at = time.monotonic()

        phase = "sync"
        say(phase, 0, 0)
        target = max(live.checkpoint(), builder.checkpoint(), key=Checkpoint.parse)
        builder.catch_up(until=target, progress=advance)
        live_error: str | None = None
        try:
            live.catch_up(until=target)
        except (ProjectionError, CheckpointNotInLog) as exc:
            # An event the rules refuse, or a live checkpoint that is not in
            # the log (a restore to a point before it): the live tables can't
            # be brought to the checkpoint, so they are not compared; the
            # rebuilt ones, read from the log as it is, are swapped in.
            live_error = str(exc)
        checkpoint = builder.checkpoint()
        if live_error is None and live.checkpoint() != checkpoint:
            raise RebuildError(
                f"projection {name!r}: could not bring the live ({live.checkpoint()}) and the "
                f"rebuilt ({checkpoint}) tables to one checkpoint",
                operation="rebuild",
            )

        say("compare", 0, 0)
        differences = [] if live_error is not None else _compare(live.connection, shadow)
        rows = _count(live.connection, shadow)

        if not dry_run:
            say("swap", 0, 0)
            _swap(live.connection, name, builder.name)
            swapped = True
    finally:
        paused = 0.0 if paused_at is None else time.monotonic() - paused_at
        live.release()
        if not swapped:
            _cleanup(builder, name)
        builder.release()
    return RebuildReport(
        name=name,
        checkpoint=checkpoint,
        events=done,
        differences=differences,
        rows=rows,
        swapped=swapped,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
        paused_seconds=paused,
        live_error=live_error,
    )


def _once() -> threading.Event:
    """A stop flag already set: ``acquire(_once())`` tries the lock once."""
    stop = threading.Event()
    stop.set()
    return stop


def _quiet(phase: str, done: int, total: int) -> None:
    pass


def _holder(store: EventStore, name: str) -> str:
    """The session holding lease ``name`` ("pid 123, role …"), for messages."""
    holder = lease_sessions(store, name).get("holder")
    return "pid unknown: it is gone" if holder is None else holder.describe()


def _blockers(conn: psycopg.Connection[Any]) -> str:
    """The sessions holding locks on the live or shadow tables: whom a DDL
    step of the rebuild waited for (pid, role, application, state, how long)."""
    try:
        rows = conn.execute(sql.TABLE_LOCKERS, (SHADOW_SUFFIX,)).fetchall()
    except psycopg.Error as exc:
        return f"the sessions holding them could not be listed: {exc}"
    if not rows:
        return "no session holds a lock on them now"
    sessions = []
    for pid, role, application, state, modes, seconds in rows:
        since = "" if seconds is None else f", transaction open {seconds:.1f} s"
        state_text = state or "state unknown"
        sessions.append(
            f"pid {pid} (role {role}, application {application or '-'!r}, {state_text}"
            f"{since}; {modes})"
        )
    return "blocked by " + "; ".join(sessions)


def _bounded(conn: psycopg.Connection[Any], name: str, what: str, step: Callable[[], T]) -> T:
    """Run DDL ``step`` in one transaction whose table locks wait at most
    SWAP_LOCK_TIMEOUT per try (while it waits, its queued lock holds new
    readers back too, so a try is short); tries again, letting readers
    through in between, for up to SWAP_WAIT; then fails naming the
    sessions that hold the tables."""
    deadline = time.monotonic() + SWAP_WAIT
    tries = 0
    while True:
        tries += 1
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{round(SWAP_LOCK_TIMEOUT * 1000)}ms",),
                )
                return step()
        except psycopg.errors.LockNotAvailable as exc:
            if time.monotonic() >= deadline:
                raise RebuildError(
                    f"projection {name!r}: {what} could not lock the tables within "
                    f"{SWAP_WAIT:g} s ({tries} tries): {_blockers(conn)}; nothing was swapped",
                    operation="rebuild",
                    sqlstate=exc.sqlstate,
                ) from exc
            if tries % 20 == 0:
                log.warning("projection %s: %s is still waiting: %s", name, what, _blockers(conn))
            time.sleep(min(0.5, 0.02 * tries))  # readers get through in between


def _prepare(conn: psycopg.Connection[Any], name: str, checkpoint_name: str) -> None:
    """Fresh, empty shadow tables shaped, owned and granted like the live
    ones (utcp.rebuild_prepare), and the rebuild's checkpoint at the start
    of the log."""

    def step() -> None:
        conn.execute(sql.PREPARE_SHADOW, (SHADOW_SUFFIX,))
        conn.execute(sql.RESET_CHECKPOINT, (checkpoint_name,))

    _bounded(conn, name, "preparing the shadow tables", step)


def _compare(conn: psycopg.Connection[Any], shadow: Tables) -> list[RowDifference]:
    """Rows of live EXCEPT rebuilt and rebuilt EXCEPT live, every column."""
    differences: list[RowDifference] = []
    cur = conn.cursor(row_factory=dict_row)
    for table in ("trades", "positions", "portfolios"):
        columns = pgsql.SQL(", ").join(map(pgsql.Identifier, sql.COLUMNS[table]))
        keys = sql.KEYS[table]
        sides: list[dict[tuple[Any, ...], dict[str, Any]]] = []
        for a, b in ((LIVE, shadow), (shadow, LIVE)):
            query = pgsql.SQL("SELECT {c} FROM {a} EXCEPT SELECT {c} FROM {b}").format(
                c=columns, a=a.ident(table), b=b.ident(table)
            )
            sides.append({tuple(r[k] for k in keys): r for r in cur.execute(query).fetchall()})
        live_rows, rebuilt_rows = sides
        for key in sorted(live_rows.keys() | rebuilt_rows.keys(), key=_sort_key):
            differences.append(
                RowDifference(
                    table=table,
                    key=dict(zip(keys, key, strict=True)),
                    live=live_rows.get(key),
                    rebuilt=rebuilt_rows.get(key),
                )
            )
    return differences


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(k) for k in key)


def _count(conn: psycopg.Connection[Any], tables: Tables) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in ("trades", "positions", "portfolios"):
        query = pgsql.SQL("SELECT count(*) FROM {}").format(tables.ident(table))
        row = conn.execute(query).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def _swap(conn: psycopg.Connection[Any], name: str, checkpoint_name: str) -> None:
    """One transaction (utcp.rebuild_swap): live → old, shadow → live,
    checkpoint copied, old dropped, indexes renamed to the canonical names.
    Each try waits at most SWAP_LOCK_TIMEOUT for readers' locks (a reader
    queues behind it no longer than that); tries go on for SWAP_WAIT."""

    def step() -> None:
        conn.execute(sql.SWAP_SHADOW, (SHADOW_SUFFIX, name, checkpoint_name))

    _bounded(conn, name, "the swap", step)


def _cleanup(builder: ProjectionRunner, name: str) -> None:
    """Drop the shadow tables and the rebuild's checkpoint row (after a
    failure or a dry run), on the lease-holding connection, or on a new one
    that takes the rebuild's lease if that connection is gone."""

    def clean(conn: psycopg.Connection[Any]) -> None:
        def step() -> None:
            conn.execute(sql.DISCARD_SHADOW, (SHADOW_SUFFIX,))
            conn.execute(sql.DELETE_CHECKPOINT, (builder.name,))

        _bounded(conn, name, "removing the shadow tables", step)

    try:
        clean(builder.connection)
        return
    except (psycopg.Error, RuntimeError, RebuildError) as exc:
        log.warning("rebuild cleanup on the rebuild connection failed: %s", exc)
    builder.release()
    try:
        if builder.acquire(_once()):
            clean(builder.connection)
    except (psycopg.Error, RebuildError) as exc:
        log.warning(
            "could not remove the rebuild's shadow tables (%s): the next rebuild replaces them",
            exc,
        )
