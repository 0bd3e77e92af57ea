"""Rebuild a projection from the start of the log, without downtime.

1. Shadow tables (``utcp.trades__rebuild``, …, created ``LIKE`` the live
   ones) are filled from the start of the log by a runner with its own
   checkpoint row (``<name>__rebuild``) and its own lock, while the live
   worker keeps running and readers keep reading the live tables. It
   chases the head in at most CHASE_PASSES passes, each ending at the head
   as it was when the pass began, so busy writers cannot keep it going.
2. The rebuild then queues for the live projection's lock: the live
   worker steps back as a standby after its current batch
   (:meth:`ProjectionRunner.take_over`). Waiting is bounded by
   ``lock_timeout``.
3. Holding it, whichever of the two is behind is brought to the other's
   checkpoint, and the tables are compared row by row, every column, at
   that one checkpoint. Every differing row is reported: a difference
   means a bug, a changed rule, or a live table someone edited.
4. Unless ``dry_run``: one transaction renames the live tables away, the
   shadow tables in, copies the rebuild's checkpoint into the live row,
   drops the old tables and gives the new indexes (and the constraints
   they back) the canonical names of ``sqitch/deploy/projections.sql``.
   A reader sees either the old tables or the new ones (it may wait for
   the swap's lock for a moment), never an empty or half-built table.
   The swap happens even when rows differ: the rebuild applies the
   current rules to the whole log, so it is the truth; the differences
   are reported so an operator can see what changed.
5. The lock goes back; the live worker resumes from the same checkpoint.

On any failure (and after a dry run) the shadow tables and the rebuild's
checkpoint row are removed; the live tables are untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from eventstore import EventStore, EventStoreError, StoredEvent

from . import sql
from .errors import ProjectionError
from .runner import LOCK_CLASS, ProjectionRunner, checkpoint_order
from .sql import LIVE, SCHEMA, Tables, shadow_tables
from .status import rebuild_checkpoint_name
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
OLD_SUFFIX: Final = "__old"

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
    live worker to pause (None: no limit)."""
    factory = PROJECTIONS.get(name)
    if factory is None:
        raise RebuildError(
            f"unknown projection {name!r} (known: {', '.join(sorted(PROJECTIONS))})",
            operation="rebuild",
        )
    started = time.monotonic()
    shadow = shadow_tables()
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
            f"projection {name!r}: another rebuild is running (pid {_holder(store, builder.name)})",
            operation="rebuild",
        )
    swapped = False
    paused_at: float | None = None
    try:
        _prepare(builder.connection, shadow, builder.name)
        row = builder.connection.execute(sql.STATUS_LAG, ("0", 0)).fetchone()
        total = int(row[0]) if row else 0
        done = 0
        phase = "rebuild"

        def advance(count: int, _: StoredEvent) -> None:
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
                f"projection {name!r}: the live worker (pid {_holder(store, name)}) did not "
                f"pause within {lock_timeout} s; nothing was swapped (a `project run` worker "
                "steps back between batches, a `project catch-up` only when it is done: "
                "try again, or pass a longer --lock-timeout)",
                operation="rebuild",
            )
        paused_at = time.monotonic()

        phase = "sync"
        say(phase, 0, 0)
        target = max(live.checkpoint(), builder.checkpoint(), key=checkpoint_order)
        builder.catch_up(until=target, progress=advance)
        live_error: str | None = None
        try:
            live.catch_up(until=target)
        except ProjectionError as exc:
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
            _swap(live.connection, shadow, name, builder.name)
            swapped = True
    finally:
        paused = 0.0 if paused_at is None else time.monotonic() - paused_at
        live.release()
        if not swapped:
            _cleanup(builder, shadow)
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
    rows = store.query(
        "rebuild", sql.STATUS_LOCKS, {"class": LOCK_CLASS, "name": name, "rebuild": name}
    )
    pid = rows[0][0] if rows else None
    return "unknown" if pid is None else str(pid)


def _ident(table: str) -> pgsql.Identifier:
    return pgsql.Identifier(SCHEMA, table)


def _prepare(conn: psycopg.Connection[Any], shadow: Tables, checkpoint_name: str) -> None:
    """Fresh, empty shadow tables shaped, owned and granted like the live
    ones, and the rebuild's checkpoint at the start of the log."""
    with conn.transaction():
        for live, table in zip(LIVE.names(), shadow.names(), strict=True):
            conn.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(_ident(table)))
            conn.execute(
                pgsql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    _ident(table), _ident(live)
                )
            )
            conn.execute(pgsql.SQL("ALTER TABLE {} OWNER TO utcp_projector").format(_ident(table)))
            conn.execute(
                pgsql.SQL("GRANT SELECT ON {} TO utcp_reader, utcp_writer").format(_ident(table))
            )
        conn.execute(sql.RESET_CHECKPOINT, (checkpoint_name,))


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


def _shape(indexdef: str) -> str:
    """An index definition without its name and table: what it indexes."""
    head, _, tail = indexdef.partition(" USING ")
    return f"{head.startswith('CREATE UNIQUE')}:{tail}"


def _index_renames(conn: psycopg.Connection[Any], live: str, shadow: str) -> list[tuple[str, str]]:
    """(shadow index, live index name) pairs, matched by what they index."""
    names: dict[str, list[str]] = {}
    for index, definition in conn.execute(sql.TABLE_INDEXES, (f"{SCHEMA}.{live}",)).fetchall():
        names.setdefault(_shape(definition), []).append(index)
    renames: list[tuple[str, str]] = []
    for index, definition in conn.execute(sql.TABLE_INDEXES, (f"{SCHEMA}.{shadow}",)).fetchall():
        canonical = names.get(_shape(definition))
        if canonical and canonical[0] != index:
            renames.append((index, canonical.pop(0)))
    return renames


def _swap(conn: psycopg.Connection[Any], shadow: Tables, name: str, checkpoint_name: str) -> None:
    """One transaction: live → old, shadow → live, checkpoint copied, old
    dropped, indexes renamed to the canonical names. Each try waits at most
    SWAP_LOCK_TIMEOUT for readers' locks (a reader queues behind it no
    longer than that); tries go on for SWAP_WAIT."""
    all_tables = pgsql.SQL(", ").join(_ident(t) for t in (*LIVE.names(), *shadow.names()))
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
                conn.execute(pgsql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(all_tables))
                renames = [
                    pair
                    for live, table in zip(LIVE.names(), shadow.names(), strict=True)
                    for pair in _index_renames(conn, live, table)
                ]
                for live, table in zip(LIVE.names(), shadow.names(), strict=True):
                    conn.execute(
                        pgsql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            _ident(live), pgsql.Identifier(live + OLD_SUFFIX)
                        )
                    )
                    conn.execute(
                        pgsql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            _ident(table), pgsql.Identifier(live)
                        )
                    )
                conn.execute(sql.COPY_CHECKPOINT, (name, checkpoint_name))
                for live in LIVE.names():
                    conn.execute(pgsql.SQL("DROP TABLE {}").format(_ident(live + OLD_SUFFIX)))
                for index, canonical in renames:
                    conn.execute(
                        pgsql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            _ident(index), pgsql.Identifier(canonical)
                        )
                    )
                conn.execute(sql.DELETE_CHECKPOINT, (checkpoint_name,))
            return
        except psycopg.errors.LockNotAvailable as exc:
            if time.monotonic() >= deadline:
                raise RebuildError(
                    f"projection {name!r}: the swap could not lock the tables within "
                    f"{SWAP_WAIT:g} s ({tries} tries; long-running readers?); nothing was swapped",
                    operation="rebuild",
                ) from exc
            if tries % 20 == 0:
                log.warning("projection %s: the swap is still waiting for readers", name)
            time.sleep(min(0.5, 0.02 * tries))  # readers get through in between


def _cleanup(builder: ProjectionRunner, shadow: Tables) -> None:
    """Drop the shadow tables and the rebuild's checkpoint row (after a
    failure or a dry run), on the lock-holding connection, or on a new one
    that takes the rebuild lock if that connection is gone."""

    def clean(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            for table in shadow.names():
                conn.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(_ident(table)))
            conn.execute(sql.DELETE_CHECKPOINT, (builder.name,))

    try:
        clean(builder.connection)
        return
    except (psycopg.Error, RuntimeError) as exc:
        log.warning("rebuild cleanup on the rebuild connection failed: %s", exc)
    try:
        with psycopg.connect(builder.dsn, autocommit=True) as conn:
            row = conn.execute(sql.TRY_LOCK, (LOCK_CLASS, builder.name)).fetchone()
            if row is not None and row[0]:
                clean(conn)
    except psycopg.Error as exc:
        log.warning(
            "could not remove the rebuild's shadow tables (%s): the next rebuild replaces them",
            exc,
        )
