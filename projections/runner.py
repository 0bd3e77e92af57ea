"""The projection worker: reads the log after its checkpoint, in batches,
and commits each batch's table writes and the new checkpoint together.

* Exactly one active worker per projection: a session-level advisory lock,
  held on the worker's own connection, which also does every write. A
  second worker waits as a standby and takes over when the first one's
  session ends (crash, kill, network loss). The checkpoint update is fenced
  as well: it only moves from the checkpoint this worker read.
* A rebuild pauses the active worker: it queues for the lock
  (:meth:`ProjectionRunner.take_over`, a blocking ``pg_advisory_lock``);
  :meth:`ProjectionRunner.run` sees a queued session between batches and
  while idle, lets the lock go and waits as a standby until it is free.
* Wakes on LISTEN/NOTIFY (the store pokes the channel after appends) and
  polls anyway, so a lost notification only costs latency.
* Stops after the current batch when asked (SIGTERM in the CLI); while
  idle, within WAKE_SLICE seconds whatever the poll interval.
* An event it cannot apply stops the projection with a ProjectionError;
  the checkpoint stays just before that event, and the error is recorded
  for ``eventstore project status``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import psycopg

from eventstore import EventStore, StoredEvent
from eventstore.schemas import ProjectionEventSkipped

from . import sql
from .errors import CheckpointMoved, ProjectionError
from .sql import LIVE, Tables
from .trading import TradingProjection

__all__ = [
    "LOCK_CLASS",
    "ProjectionRunner",
    "checkpoint_order",
    "parse_checkpoint",
    "skip_stream",
]

SKIP_EVENT_TYPE: Final = ProjectionEventSkipped.EVENT_TYPE

log = logging.getLogger("projections")

#: First key of the projections' advisory locks (the second: hashtext(name)).
LOCK_CLASS: Final = 0x55544350 & 0x7FFFFFFF  # "UTCP"
DEFAULT_BATCH: Final = 500
#: While idle, the worker looks at ``stop`` and for a queued rebuild this often.
WAKE_SLICE: Final = 0.5

Progress = Callable[[int, StoredEvent], None]


def parse_checkpoint(checkpoint: str) -> tuple[str, int]:
    tx, _, pos = checkpoint.partition("/")
    return tx, int(pos)


def skip_stream(projection: str) -> str:
    """The stream of a projection's skip decisions."""
    return f"projection-{projection}"


def checkpoint_order(checkpoint: str) -> tuple[int, int]:
    """A sort key: checkpoints in log order."""
    tx, pos = parse_checkpoint(checkpoint)
    return int(tx), pos


class ProjectionRunner:
    """Runs one projection into one set of tables.

    ``dsn`` is for the worker's own connections (the lock holder, and a
    listener); the log is read through ``store``.
    """

    def __init__(
        self,
        store: EventStore,
        dsn: str,
        projection: TradingProjection | None = None,
        *,
        tables: Tables = LIVE,
        checkpoint_name: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        poll_interval: float = 1.0,
        channel: str | None = None,
    ) -> None:
        self.store = store
        self.dsn = dsn
        self.projection = projection if projection is not None else TradingProjection()
        self.tables = tables
        self.name = checkpoint_name or self.projection.name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.channel = channel if channel is not None else store.settings.notify_channel
        self._conn: psycopg.Connection[Any] | None = None

    # -- the lock ------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn,
            autocommit=True,
            application_name=f"eventstore-projection-{self.name}",
        )

    def acquire(self, stop: threading.Event | None = None, *, standby: float = 0.5) -> bool:
        """Become the active worker: take the lock, waiting as a standby
        (polling every ``standby`` s) until it is free or ``stop`` is set."""
        conn = self._connect()
        try:
            conn.execute(sql.ENSURE_CHECKPOINT, (self.name,))
            while True:
                row = conn.execute(sql.TRY_LOCK, (LOCK_CLASS, self.name)).fetchone()
                if row is not None and row[0]:
                    self._conn = conn
                    log.info("projection %s: active worker", self.name)
                    return True
                if stop is not None and stop.wait(standby):
                    conn.close()
                    return False
                if stop is None:
                    time.sleep(standby)
        except BaseException:
            conn.close()
            raise

    def take_over(self, timeout: float | None = None) -> bool:
        """Queue for the lock (a blocking ``pg_advisory_lock``) for up to
        ``timeout`` seconds (None: no limit); False on timeout. An active
        :meth:`run` worker sees the queued session between batches and
        steps back as a standby; the lock then goes to this session, not to
        another standby (a waiting request is served first)."""
        conn = self._connect()
        try:
            conn.execute(sql.ENSURE_CHECKPOINT, (self.name,))
            millis = 0 if timeout is None else max(1, round(timeout * 1000))
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{millis}ms",))
            conn.execute(sql.TAKE_LOCK, (LOCK_CLASS, self.name))
            conn.execute("RESET lock_timeout")
        except psycopg.errors.LockNotAvailable:
            conn.close()
            return False
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        log.info("projection %s: took over the lock", self.name)
        return True

    def lock_sessions(self) -> list[tuple[int, bool]]:
        """(backend pid, granted) of the sessions holding or queued for the lock."""
        rows = self.connection.execute(
            sql.LOCK_SESSIONS, {"class": LOCK_CLASS, "name": self.name}
        ).fetchall()
        return [(int(pid), bool(granted)) for pid, granted in rows]

    def pause_requested(self) -> bool:
        """Another session is queued for this lock (a rebuild taking over)."""
        return any(not granted for _, granted in self.lock_sessions())

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # ends the session: the lock goes with it
            self._conn = None

    def __enter__(self) -> ProjectionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RuntimeError("acquire() the projection first")
        return self._conn

    # -- processing ----------------------------------------------------------

    def checkpoint(self) -> str:
        row = self.connection.execute(sql.READ_CHECKPOINT, (self.name,)).fetchone()
        assert row is not None, "ENSURE_CHECKPOINT ran in acquire()"
        return str(row[0])

    def head(self) -> str:
        """The checkpoint of the newest event every reader can see now (this
        projection's own checkpoint when the log is empty): the goal of a
        catch-up that must end while writers keep appending."""
        row = self.connection.execute(sql.HEAD).fetchone()
        if row is None:
            return self.checkpoint()
        return max(str(row[0]), self.checkpoint(), key=checkpoint_order)

    def catch_up(
        self,
        stop: threading.Event | None = None,
        *,
        until: str | None = None,
        progress: Progress | None = None,
        pausable: bool = False,
    ) -> int:
        """Apply everything committed (or up to checkpoint ``until``); return
        how many events were read. Stops between batches when ``stop`` is
        set, or, if ``pausable``, when another session queues for the lock."""
        conn = self.connection
        checkpoint = self.checkpoint()
        done = 0
        while stop is None or not stop.is_set():
            if pausable and self.pause_requested():
                break
            events = self.store.read_all(after=checkpoint, limit=self.batch_size)
            if until is not None:
                limit = checkpoint_order(until)
                events = [e for e in events if checkpoint_order(e.checkpoint) <= limit]
            if not events:
                break
            checkpoint = self._apply(conn, checkpoint, events)
            done += len(events)
            if progress is not None:
                progress(len(events), events[-1])
        return done

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        checkpoint: str,
        events: list[StoredEvent],
        skipped: frozenset[uuid.UUID] = frozenset(),
    ) -> str:
        """Apply ``events`` (but the ``skipped`` ones) and move the checkpoint
        past the last of them, in one transaction."""
        from_tx, from_pos = parse_checkpoint(checkpoint)
        last = events[-1]
        to_tx, to_pos = parse_checkpoint(last.checkpoint)
        try:
            with conn.transaction():
                applied = [e for e in events if e.event_id not in skipped] if skipped else events
                self.projection.apply(conn, applied, self.tables)
                moved = conn.execute(
                    sql.ADVANCE_CHECKPOINT,
                    {
                        "name": self.name,
                        "tx": to_tx,
                        "pos": to_pos,
                        "count": len(events),
                        "last_event_at": last.created_at,
                        "from_tx": from_tx,
                        "from_pos": from_pos,
                    },
                ).rowcount
                if moved != 1:
                    raise CheckpointMoved(
                        f"projection {self.name!r}: the checkpoint moved away from "
                        f"{checkpoint}: another worker is active",
                        operation="project",
                    )
        except ProjectionError as exc:
            # The batch rolled back. An operator may have decided to pass
            # over this event (eventstore project skip): apply the batch
            # without it. Otherwise apply the events before it, so the
            # checkpoint stops just before it, not at the batch start.
            refused = exc.event.event_id
            decision = self._skip_decision(conn, exc.event)
            if decision is not None and refused not in skipped:
                log.warning(
                    "projection %s: passing over event %s, which it refuses (%s), as %s "
                    "decided: %s",
                    self.projection.name,
                    refused,
                    exc.reason,
                    decision[1],
                    decision[0],
                )
                return self._apply(conn, checkpoint, events, skipped | {refused})
            index = next((i for i, e in enumerate(events) if e.event_id == refused), 0)
            if index > 0:
                self._apply(conn, checkpoint, events[:index], skipped)
            conn.execute(sql.RECORD_ERROR, (str(exc), exc.event.event_id, self.name))
            raise  # the caller reports it (once); status shows it from the table
        return last.checkpoint

    def _skip_decision(
        self, conn: psycopg.Connection[Any], event: StoredEvent
    ) -> tuple[str, str] | None:
        """(reason, actor) of an operator's decision to pass over ``event``."""
        row = conn.execute(
            sql.SKIP_DECISION,
            (skip_stream(self.projection.name), SKIP_EVENT_TYPE, str(event.event_id)),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def run(self, stop: threading.Event, *, progress: Progress | None = None) -> None:
        """The long-running worker: standby until active, then catch up,
        wait for a notification (or the poll interval), repeat, until
        ``stop`` is set. Raises ProjectionError on an event it cannot apply."""
        if not self.acquire(stop):
            return
        listener = self._connect() if self.channel else None
        try:
            if listener is not None:
                listener.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel))
                )
            while not stop.is_set():
                self.catch_up(stop, progress=progress, pausable=True)
                if stop.is_set():
                    break
                if self.pause_requested():
                    # A rebuild queued for the lock: step back as a standby;
                    # the queued session gets the lock before any try-lock.
                    log.info("projection %s: paused for a rebuild (standby)", self.name)
                    self.release()
                    if not self.acquire(stop):
                        break
                    continue
                self._idle(listener, stop)
        finally:
            if listener is not None:
                listener.close()
            self.release()

    def _idle(self, listener: psycopg.Connection[Any] | None, stop: threading.Event) -> None:
        """Wait for a notification or the poll interval, in WAKE_SLICE steps,
        returning early when ``stop`` is set or a rebuild queues for the lock."""
        deadline = time.monotonic() + self.poll_interval
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, WAKE_SLICE)
            if listener is not None:
                if any(True for _ in listener.notifies(timeout=step, stop_after=1)):
                    return
            else:
                stop.wait(step)
            if self.pause_requested():
                return
