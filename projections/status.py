"""How far a projection is: ``eventstore project status``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

import msgspec

from eventstore import EventStore

from . import sql
from .runner import LOCK_CLASS, parse_checkpoint

__all__ = ["ProjectionStatus", "projection_status", "rebuild_checkpoint_name"]

START: Final = "0/0"


def rebuild_checkpoint_name(name: str) -> str:
    """The checkpoint row (and lock) of a rebuild of projection ``name``."""
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
    #: Backend pid of the session holding the projection's lock, if any.
    active_worker_pid: int | None
    #: Backend pid of a rebuild in progress, if any.
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


def projection_status(store: EventStore, name: str = "trading") -> ProjectionStatus:
    """Checkpoint, lag (events and seconds), active worker and last error
    of projection ``name``. A projection that never ran is at the start of
    the log, with every committed event as lag."""
    rows = store.query("project_status", sql.STATUS_CHECKPOINT, (name,))
    if rows:
        checkpoint, processed, last_event_at, updated_at, error, error_at, error_event = rows[0]
    else:
        checkpoint, processed, last_event_at, updated_at = START, 0, None, None
        error, error_at, error_event = None, None, None
    tx, pos = parse_checkpoint(str(checkpoint))
    lag_rows = store.query("project_status", sql.STATUS_LAG, (tx, pos))
    lag_events, lag_seconds, waiting = lag_rows[0] if lag_rows else (0, 0.0, 0)
    locks = store.query(
        "project_status",
        sql.STATUS_LOCKS,
        {"class": LOCK_CLASS, "name": name, "rebuild": rebuild_checkpoint_name(name)},
    )
    worker, rebuilder = locks[0] if locks else (None, None)
    return ProjectionStatus(
        name=name,
        checkpoint=str(checkpoint),
        events_processed=int(processed),
        lag_events=int(lag_events),
        lag_seconds=float(lag_seconds) if lag_events else 0.0,
        waiting_events=int(waiting),
        active_worker_pid=None if worker is None else int(worker),
        rebuild_pid=None if rebuilder is None else int(rebuilder),
        last_event_at=last_event_at,
        updated_at=updated_at,
        last_error=error,
        last_error_at=error_at,
        last_error_event=error_event,
    )
