"""The projection worker: reads the log after its checkpoint, in batches,
and commits each batch's table writes and the new checkpoint together.

* Exactly one active worker per projection: a lease, one row of
  ``utcp.projection_leases`` that only ``utcp_projector`` can write (no
  advisory lock with a well-known key, which any role could take and hold).
  A worker takes a session-level advisory lock on a random nonce of its
  own, on its own connection (which also does every write), and claims the
  row for its pid, nonce and backend start. The holder is alive while its
  session holds that nonce's lock (``utcp.projection_session_alive``, from
  pg_locks and pg_stat_activity: no other session can fake it for the
  holder's pid, even one given that pid again), so when its session
  ends (crash, kill, network loss) the lease is free at once and a standby
  (polling) takes it over. The checkpoint update is fenced: it only moves
  from the checkpoint this worker read, and only while the lease is still
  this session's.
* A rebuild pauses the active worker: it writes itself into the lease as
  the requester (:meth:`ProjectionRunner.take_over`, polling up to its
  timeout); :meth:`ProjectionRunner.run` sees a live requester between
  batches and while idle, hands the lease over and waits as a standby.
  A standby never claims the lease while a live requester is queued.
* Wakes on LISTEN/NOTIFY (the store pokes the channel after appends) and
  polls anyway, so a lost notification only costs latency.
* Stops after the current batch when asked (SIGTERM in the CLI); while
  idle, within WAKE_SLICE seconds whatever the poll interval.
* An event it cannot apply stops the projection with a ProjectionError;
  the checkpoint stays just before that event, and the error is recorded
  for ``eventstore project status``. An operator's decision to pass over
  it (``eventstore project skip``, by a member of utcp_operator) is
  honoured; any number of them in one batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from eventstore import Checkpoint, EventStore, RawStoredEvent, watchdog
from trading import ProjectionEventSkipped

from . import sql
from .errors import CheckpointMoved, ProjectionError
from .sql import LIVE, Tables
from .trading import TradingProjection

__all__ = [
    "LeaseHolder",
    "ProjectionRunner",
    "skip_stream",
]

SKIP_EVENT_TYPE: Final = ProjectionEventSkipped.EVENT_TYPE

log = logging.getLogger("projections")

DEFAULT_BATCH: Final = 500
#: While idle, the worker looks at ``stop`` and for a queued rebuild this often.
WAKE_SLICE: Final = 0.5

#: ``progress(count, last)``: after each committed batch, its size and last event.
Progress = Callable[[int, RawStoredEvent], None]


def skip_stream(projection: str) -> str:
    """The stream of a projection's skip decisions."""
    return f"projection-{projection}"


class LeaseHolder(msgspec.Struct, frozen=True):
    """A live session holding (``role`` "holder") or queued for ("requester")
    a projection's lease, as pg_stat_activity shows it."""

    role: str
    pid: int
    usename: str | None
    application_name: str | None
    state: str | None
    since: dt.datetime | None

    def describe(self) -> str:
        """As "pid 123, role app, application 'x', idle, holding it for 4.2 s"."""
        parts = [f"pid {self.pid}"]
        if self.usename:
            parts.append(f"role {self.usename}")
        if self.application_name:
            parts.append(f"application {self.application_name!r}")
        if self.state:
            parts.append(self.state)
        if self.since is not None:
            seconds = max(0.0, (dt.datetime.now(dt.UTC) - self.since).total_seconds())
            parts.append(f"holding it for {seconds:.1f} s")
        return ", ".join(parts)


def lease_holders(conn: psycopg.Connection[Any], name: str) -> list[LeaseHolder]:
    """The live holder and requester of projection ``name``'s lease."""
    rows = conn.cursor(row_factory=dict_row).execute(sql.LEASE_HOLDERS, (name,)).fetchall()
    return [LeaseHolder(**row) for row in rows]


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
        self._nonce = 0

    # -- the lease -----------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of the worker's own, with the store's timeouts
        (statement, idle in transaction: a frozen worker cannot hold the
        readers' horizon back for long), keepalives and TCP_USER_TIMEOUT,
        after the DSN's own options (later -c wins)."""
        kwargs = self.store.settings.connection_kwargs(f"eventstore-projection-{self.name}")
        user_options = conninfo_to_dict(self.dsn).get("options")
        if user_options:
            kwargs["options"] = f"{user_options} {kwargs['options']}"
        return psycopg.connect(self.dsn, **kwargs)

    def _bounded(self, conn: psycopg.Connection[Any] | None = None) -> AbstractContextManager[None]:
        """The store's client-side deadline on the round trips of a block on
        the worker's connection (a batch, a lease check): past it the
        connection is shut down (watchdog.DeadlineExceeded, an
        OperationalError: the worker reconnects)."""
        target = conn if conn is not None else self.connection
        return watchdog.guard(target, self.store.settings.round_trip_timeout)

    def _session(self) -> tuple[psycopg.Connection[Any], int]:
        """A new connection holding the advisory lock on a random nonce of
        its own (its liveness), with the checkpoint and lease rows in place."""
        conn = self._connect()
        try:
            with self._bounded(conn):
                conn.execute(sql.ENSURE_CHECKPOINT, (self.name,))
                conn.execute(sql.ENSURE_LEASE, (self.name,))
                while True:
                    nonce = secrets.randbits(62) + 1
                    row = conn.execute(sql.TAKE_NONCE, (nonce,)).fetchone()
                    if row is not None and row[0]:
                        return conn, nonce
        except BaseException:
            conn.close()
            raise

    def _params(self) -> dict[str, Any]:
        return {"name": self.name, "nonce": self._nonce}

    def acquire(self, stop: threading.Event | None = None, *, standby: float = 0.5) -> bool:
        """Become the active worker: claim the lease, waiting as a standby
        (polling every ``standby`` s) until it is free or ``stop`` is set."""
        conn, nonce = self._session()
        params = {"name": self.name, "nonce": nonce}
        try:
            while True:
                with self._bounded(conn):
                    claimed = conn.execute(sql.CLAIM_LEASE, params).rowcount == 1
                if claimed:
                    self._conn, self._nonce = conn, nonce
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

    def take_over(self, timeout: float | None = None, *, poll: float = 0.1) -> bool:
        """Ask the active worker to hand the lease over, and wait for it (or
        for the holder to go away) for up to ``timeout`` seconds (None: no
        limit); False on timeout. An active :meth:`run` worker sees the
        request between batches and hands over; standbys do not jump this
        queue. Another live request queued first is served first."""
        conn, nonce = self._session()
        params = {"name": self.name, "nonce": nonce}
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                row = conn.execute(sql.HOLDS_LEASE, params).fetchone()
                if row is not None and row[0]:  # handed over, or claimed
                    conn.execute(sql.WITHDRAW_REQUEST, params)
                    self._conn, self._nonce = conn, nonce
                    log.info("projection %s: took over the lease", self.name)
                    return True
                if conn.execute(sql.REQUEST_LEASE, params).rowcount == 1:
                    # Queued (first): the lease is ours as soon as the holder
                    # hands it over, or at once if there is none.
                    conn.execute(sql.CLAIM_LEASE, params)
                    continue_now = conn.execute(sql.HOLDS_LEASE, params).fetchone()
                    if continue_now is not None and continue_now[0]:
                        continue
                if deadline is not None and time.monotonic() >= deadline:
                    conn.close()  # the request dies with the session
                    return False
                time.sleep(poll)
        except BaseException:
            conn.close()
            raise

    def holders(self) -> list[LeaseHolder]:
        """The live holder and requester of this projection's lease."""
        with self._connect() as conn:
            return lease_holders(conn, self.name)

    def pause_requested(self) -> bool:
        """Another live session asks to take over (a rebuild)."""
        row = self.connection.execute(sql.PAUSE_REQUESTED, self._params()).fetchone()
        return bool(row is not None and row[0])

    def hand_over(self) -> bool:
        """Give the lease to the live session that asked for it, and let go."""
        moved = self.connection.execute(sql.HAND_OVER, self._params()).rowcount == 1
        self.release()
        return moved

    def release(self) -> None:
        """Let go of the lease and end the session (its nonce lock goes with it,
        so the lease is free even if clearing the row failed)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                if not conn.closed and not conn.broken:
                    conn.execute(sql.RELEASE_LEASE, {"name": self.name, "nonce": self._nonce})
            except psycopg.Error as exc:
                log.debug("projection %s: clearing the lease failed: %s", self.name, exc)
            finally:
                conn.close()

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
        return max(str(row[0]), self.checkpoint(), key=Checkpoint.parse)

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
        with self._bounded(conn):
            checkpoint = self.checkpoint()
        done = 0
        while stop is None or not stop.is_set():
            if pausable:
                with self._bounded(conn):
                    paused = self.pause_requested()
                if paused:
                    break
            # Payloads as their JSON bytes: the projection decodes only the
            # events it reads, straight into their Structs (bench/README.md).
            events = self.store.read_all(after=checkpoint, limit=self.batch_size, raw=True)
            if until is not None:
                limit = Checkpoint.parse(until, field="until", operation="project")
                events = [e for e in events if Checkpoint.parse(e.checkpoint) <= limit]
            if not events:
                break
            with self._bounded(conn):
                checkpoint = self._apply(conn, checkpoint, events)
            done += len(events)
            if progress is not None:
                progress(len(events), events[-1])
        return done

    def _apply(
        self, conn: psycopg.Connection[Any], checkpoint: str, events: list[RawStoredEvent]
    ) -> str:
        """Apply ``events`` and move the checkpoint past the last of them, in
        one transaction. An event the rules refuse is passed over when an
        operator decided so (any number of them, iteratively: each refusal
        rolls back to a savepoint, the events before it are applied, and
        the rest goes on after it); otherwise the events before it are
        committed, the error recorded, and the ProjectionError raised."""
        start = Checkpoint.parse(checkpoint)
        error: ProjectionError | None = None
        decisions: dict[str, tuple[str, str]] | None = None
        done = 0  # events[:done] are applied (or passed over) in this transaction
        # After a refusal, the rest goes in growing steps (1, 2, 4, …), so a
        # run of refused events costs one short try each, not the whole rest.
        step: int | None = None
        with conn.transaction():
            limit = end = len(events)
            while done < limit:
                try:
                    with conn.transaction():  # a savepoint
                        self.projection.apply(conn, events[done:end], self.tables)
                    done = end
                    if step is not None:
                        step *= 2
                    end = limit if step is None else min(limit, done + step)
                    continue
                except ProjectionError as exc:
                    refused = exc.event.event_id
                    index = next(
                        (i for i in range(done, end) if events[i].event_id == refused), None
                    )
                    if index is None:
                        raise  # not one of this batch's events: a bug, not a refusal
                    if index > done:
                        end = index  # apply the events before it first
                        continue
                    if decisions is None:
                        decisions = self._skip_decisions(conn, events[done:])
                    decision = decisions.get(str(refused))
                    if decision is None:
                        error, limit = exc, done
                        break
                    log.warning(
                        "projection %s: passing over event %s, which it refuses (%s), as %s "
                        "decided: %s",
                        self.projection.name,
                        refused,
                        exc.reason,
                        decision[1],
                        decision[0],
                    )
                    done, step = done + 1, 1
                    end = min(limit, done + step)
            if done > 0:
                last = events[done - 1]
                to = Checkpoint.parse(last.checkpoint)
                moved = conn.execute(
                    sql.ADVANCE_CHECKPOINT,
                    {
                        "name": self.name,
                        "tx": to.tx_param,
                        "pos": to.position,
                        "count": done,
                        "last_event_at": last.created_at,
                        "from_tx": start.tx_param,
                        "from_pos": start.position,
                        "nonce": self._nonce,
                    },
                ).rowcount
                if moved != 1:
                    raise CheckpointMoved(
                        f"projection {self.name!r}: the checkpoint moved away from "
                        f"{checkpoint}, or this session lost the lease: another worker is active",
                        operation="project",
                    )
        if error is not None:
            conn.execute(sql.RECORD_ERROR, (str(error), error.event.event_id, self.name))
            raise error  # the caller reports it (once); status shows it from the table
        return events[-1].checkpoint

    def _skip_decisions(
        self, conn: psycopg.Connection[Any], events: list[RawStoredEvent]
    ) -> dict[str, tuple[str, str]]:
        """Event id → (reason, actor) of the operators' decisions to pass
        over any of ``events`` (only those an operator recorded)."""
        rows = conn.execute(
            sql.SKIP_DECISIONS,
            (
                skip_stream(self.projection.name),
                SKIP_EVENT_TYPE,
                [str(e.event_id) for e in events],
            ),
        ).fetchall()
        return {str(row[0]): (str(row[1]), str(row[2])) for row in rows}

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
            woken_at: float | None = None
            while not stop.is_set():
                if self.catch_up(stop, progress=progress, pausable=True):
                    woken_at = None
                if stop.is_set():
                    break
                if self.pause_requested():
                    # A rebuild asked for the lease: hand it over and wait
                    # as a standby (which never claims ahead of a requester).
                    log.info("projection %s: paused for a rebuild (standby)", self.name)
                    self.hand_over()
                    if not self.acquire(stop):
                        break
                    continue
                interval = self.poll_interval
                if woken_at is not None and time.monotonic() - woken_at < self.poll_interval:
                    # Woken, but nothing was readable yet: an older transaction
                    # somewhere in the cluster holds the readers' horizon.
                    # Look again soon rather than a whole poll interval later.
                    interval = min(interval, WAKE_SLICE)
                if self._idle(listener, stop, interval):
                    woken_at = time.monotonic()
        finally:
            if listener is not None:
                listener.close()
            self.release()

    def _idle(
        self, listener: psycopg.Connection[Any] | None, stop: threading.Event, interval: float
    ) -> bool:
        """Wait for a notification or ``interval`` seconds, in WAKE_SLICE
        steps, returning early when ``stop`` is set or a rebuild asks for the
        lease. True when a notification ended the wait."""
        deadline = time.monotonic() + interval
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step = min(remaining, WAKE_SLICE)
            if listener is not None:
                if any(True for _ in listener.notifies(timeout=step, stop_after=1)):
                    return True
            else:
                stop.wait(step)
            with self._bounded():
                if self.pause_requested():
                    return False
        return False
