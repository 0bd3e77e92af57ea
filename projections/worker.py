"""Running a projection, as a program asks for it: one catch-up (taking
over from an active worker if asked to), and the long-running worker that
waits as a standby while another is active and reconnects after a lost
connection (``eventstore project catch-up | run``; the HTTP service calls
the same).

Every failure leaves as an :class:`eventstore.EventStoreError` (a
:class:`WorkerActive`, a :class:`ProjectionError` for an event the rules
refuse, or :func:`projection_failure`'s mapping of a driver error).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

import msgspec

from eventstore import EventStore, RawStoredEvent, StorageUnavailable

from .errors import CheckpointMoved, WorkerActive, mapped_errors
from .runner import DEFAULT_BATCH, ProjectionRunner
from .status import lease_sessions, projection_status

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "RECONNECT_DELAY",
    "CatchUp",
    "catch_up",
    "describe_holder",
    "run_worker",
]

log = logging.getLogger("projections")

#: ``catch_up(wait=True)``: how long to wait for an active worker to step back.
DEFAULT_LOCK_TIMEOUT: Final = 60.0
#: ``run_worker``: after a lost connection, standby again after this delay (s).
RECONNECT_DELAY: Final = 1.0

#: ``progress(done, total)``: events applied so far, of about ``total``.
CatchUpProgress = Callable[[int, int], None]


class CatchUp(msgspec.Struct, frozen=True):
    """What one :func:`catch_up` did."""

    projection: str
    #: Events applied (refused events an operator passed over included).
    applied: int
    #: The projection's checkpoint when it ended.
    checkpoint: str
    #: True when ``stop`` ended it before the head it aimed at.
    stopped: bool


def describe_holder(store: EventStore, name: str) -> str:
    """Who holds projection ``name``'s lease: "pid 123, role …, application …"."""
    holder = lease_sessions(store, name).get("holder")
    if holder is None:
        return "pid unknown: it has just let go; try again"
    return holder.describe()


def _stop_at_once() -> threading.Event:
    """A stop flag already set: ``acquire`` then tries the lease once."""
    stop = threading.Event()
    stop.set()
    return stop


def catch_up(
    store: EventStore,
    dsn: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    wait: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    stop: threading.Event | None = None,
    progress: CatchUpProgress | None = None,
) -> CatchUp:
    """Apply every event committed when it starts, then let go.

    With a worker active this fails at once (:class:`WorkerActive`), or,
    with ``wait``, asks it to step back and waits up to ``lock_timeout``
    seconds. Events appended meanwhile are left for the next catch-up or a
    :func:`run_worker`: writers that keep appending cannot keep it going.
    ``stop`` ends it between batches.
    """
    runner = ProjectionRunner(store, dsn, batch_size=batch_size)
    name = runner.name
    stop = stop if stop is not None else threading.Event()
    with mapped_errors("catch-up", name):
        if wait:
            if not runner.take_over(lock_timeout):
                holder = describe_holder(store, name)
                raise WorkerActive(
                    f"projection {name!r}: a worker is active ({holder}) and did not step "
                    f"back within {lock_timeout:g} s",
                    holder=holder,
                    operation="catch-up",
                )
        elif not runner.acquire(_stop_at_once()):
            holder = describe_holder(store, name)
            raise WorkerActive(
                f"projection {name!r}: a worker is active ({holder}); it keeps the tables up "
                "to date (pass --wait to pause it and catch up here)",
                holder=holder,
                operation="catch-up",
            )
        try:
            total = projection_status(store, name).lag_events
            done = 0

            def advance(count: int, _: RawStoredEvent) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress(done, max(total, done))

            runner.catch_up(stop, until=runner.head(), progress=advance)
            checkpoint = runner.checkpoint()
        finally:
            runner.release()
    return CatchUp(projection=name, applied=done, checkpoint=checkpoint, stopped=stop.is_set())


def run_worker(
    store: EventStore,
    dsn: str,
    stop: threading.Event,
    *,
    batch_size: int = DEFAULT_BATCH,
    poll_interval: float = 1.0,
    reconnect_delay: float = RECONNECT_DELAY,
) -> None:
    """The long-running worker, until ``stop`` is set: a standby while
    another worker is active, then the active one (wakes on new events,
    polls anyway, steps back for a rebuild). A lost connection, or a
    checkpoint another worker moved, sends it back to standby after
    ``reconnect_delay`` seconds. Raises on an event its rules refuse
    (:class:`ProjectionError`) and on what waiting cannot fix (no rights,
    no schema). Logs what it does (logger ``projections``: standby,
    reconnects and stops at INFO, each batch at DEBUG)."""
    runner = ProjectionRunner(store, dsn, batch_size=batch_size, poll_interval=poll_interval)
    name = runner.name

    def applied(count: int, last: RawStoredEvent) -> None:
        events = "1 event" if count == 1 else f"{count:,} events"
        log.debug("projection %s: +%s, checkpoint %s", name, events, last.checkpoint)

    with mapped_errors("run", name):
        active = lease_sessions(store, name).get("holder")
    if active is not None:
        log.info(
            "projection %s: standby, a worker is active (%s); taking over when it stops",
            name,
            active.describe(),
        )
    while not stop.is_set():
        try:
            with mapped_errors("run", name):
                runner.run(stop, progress=applied)
        except (StorageUnavailable, CheckpointMoved) as exc:
            runner.release()
            why = exc.message.removeprefix(f"projection {name!r}: ")
            log.info("projection %s: %s; standby again in %g s", name, why, reconnect_delay)
            stop.wait(reconnect_delay)
            continue
        break
    log.info("projection %s: stopped", name)
