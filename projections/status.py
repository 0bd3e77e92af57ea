"""How far a projection is: ``eventstore project status``."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from eventstore import Checkpoint, EventStore

from . import sql
from .runner import LeaseHolder

__all__ = [
    "ProjectionStatus",
    "lease_sessions",
    "needs_operator",
    "projection_status",
    "rebuild_checkpoint_name",
]


def rebuild_checkpoint_name(name: str) -> str:
    """The checkpoint row (and lease) of a rebuild of projection ``name``."""
    return f"{name}__rebuild"


class ProjectionStatus(msgspec.Struct, frozen=True):
    """One projection's progress, worker and last error."""

    name: str
    #: The last event applied ("tx/position"; "0/0": nothing yet).
    checkpoint: str
    events_processed: int
    #: Committed events a reader can see after the checkpoint.
    lag_events: int
    #: 0 when caught up, else how long ago the oldest unapplied event was written.
    lag_seconds: float
    #: Backend pid of the session holding the projection's lease (while it
    #: lives), if any.
    active_worker_pid: int | None
    #: Backend pid of a rebuild in progress (holding the rebuild's lease), if any.
    rebuild_pid: int | None
    #: created_at of the last event applied.
    last_event_at: dt.datetime | None
    #: When the checkpoint last moved.
    updated_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    last_error_event: uuid.UUID | None
    #: Committed events no reader can see yet: an older transaction in the
    #: cluster is still open (``eventstore status`` names it). Not lag yet.
    waiting_events: int = 0
    #: The active worker's session (pid, role, application, state, since).
    active_worker: LeaseHolder | None = None
    #: False when the checkpoint names an event this log does not hold (the
    #: log was restored to a point before it): the projection cannot go on
    #: from there and must be rebuilt (docs/runbook.md, "Restores").
    checkpoint_in_log: bool = True


def projection_status(store: EventStore, name: str = "trading") -> ProjectionStatus:
    """Checkpoint, lag (events and seconds), active worker and last error
    of projection ``name``. A projection that never ran is at the start of
    the log, with every committed event as lag."""
    rows = store.query("project_status", sql.STATUS_CHECKPOINT, (name,))
    if rows:
        checkpoint, processed, last_event_at, updated_at, error, error_at, error_event = rows[0]
    else:
        checkpoint, processed, last_event_at, updated_at = str(Checkpoint.START), 0, None, None
        error, error_at, error_event = None, None, None
    at = Checkpoint.parse(str(checkpoint), field="checkpoint", operation="project_status")
    lag_rows = store.query("project_status", sql.STATUS_LAG, (at.tx_param, at.position))
    lag_events, lag_seconds, waiting = lag_rows[0] if lag_rows else (0, 0.0, 0)
    in_log = store.checkpoint_in_log(str(at))
    holders = lease_sessions(store, name)
    rebuilds = lease_sessions(store, rebuild_checkpoint_name(name))
    worker = holders.get("holder")
    rebuilder = rebuilds.get("holder")
    return ProjectionStatus(
        name=name,
        checkpoint=str(checkpoint),
        events_processed=int(processed),
        lag_events=int(lag_events),
        lag_seconds=float(lag_seconds) if lag_events else 0.0,
        waiting_events=int(waiting),
        active_worker_pid=None if worker is None else worker.pid,
        rebuild_pid=None if rebuilder is None else rebuilder.pid,
        active_worker=worker,
        last_event_at=last_event_at,
        updated_at=updated_at,
        last_error=error,
        last_error_at=error_at,
        last_error_event=error_event,
        checkpoint_in_log=in_log,
    )


def lease_sessions(store: EventStore, name: str) -> dict[str, LeaseHolder]:
    """The live "holder" and "requester" of lease ``name`` (through
    utcp.projection_lease_holders: the lease table itself is the projector's)."""
    rows = store.query("project_status", sql.LEASE_HOLDERS, (name,), by_name=True)
    return {str(row["role"]): LeaseHolder(**row) for row in rows}


def needs_operator(status: ProjectionStatus) -> list[str]:
    """What in ``status`` needs an operator, one sentence each (none: all
    is well): an event the rules refused, a checkpoint the log does not
    hold, and events waiting with no worker active to apply them."""
    found: list[str] = []
    if status.last_error is not None:
        found.append(f"stopped by an error: {status.last_error}")
    if not status.checkpoint_in_log:
        found.append(
            f"the checkpoint {status.checkpoint} names no event in this log: rebuild it "
            "(eventstore project rebuild)"
        )
    if status.lag_events and status.active_worker_pid is None and status.rebuild_pid is None:
        waiting = (
            "1 event waits" if status.lag_events == 1 else f"{status.lag_events:,} events wait"
        )
        found.append(f"{waiting} and no worker is active (start one: eventstore project run)")
    return found
