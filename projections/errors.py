"""Errors of the projections (all :class:`eventstore.EventStoreError`), and
the one place where a failure of a projection's own connections becomes one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg

from eventstore import (
    EventStoreError,
    RawStoredEvent,
    SchemaNotDeployed,
    StorageError,
    StorageUnavailable,
    StoredEvent,
)

__all__ = [
    "CheckpointMoved",
    "ProjectionError",
    "WorkerActive",
    "mapped_errors",
    "projection_failure",
]

#: SQLSTATEs of a schema that is missing or only partly deployed: an
#: undefined table, function, column or schema.
_NOT_DEPLOYED: Final = frozenset({"42P01", "42883", "42703", "3F000"})


class ProjectionError(EventStoreError):
    """An event the projection cannot apply: the projection stops before
    it, with its checkpoint just before the event, and shows the error in
    ``eventstore project status``."""

    def __init__(
        self, projection: str, event: StoredEvent | RawStoredEvent, reason: str, **ctx: Any
    ) -> None:
        super().__init__(
            f"projection {projection!r} cannot apply event {event.event_id} "
            f"({event.type}, {event.stream_id} v{event.stream_version}, "
            f"position {event.position}): {reason}",
            operation="project",
            stream_id=event.stream_id,
            **ctx,
        )
        self.projection = projection
        self.event = event
        self.reason = reason


class CheckpointMoved(EventStoreError):
    """Another worker moved the checkpoint: this one is not the active worker."""


class WorkerActive(EventStoreError):
    """Another session is the projection's active worker (``holder``
    describes it), and this one may not or did not take over."""

    def __init__(self, message: str, *, holder: str, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.holder = holder


def projection_failure(exc: psycopg.Error, operation: str, projection: str) -> EventStoreError:
    """A driver error on a projection's own connection (its worker, its
    rebuild) as the store's kind of error, saying what to do about it."""
    state = exc.sqlstate
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"projection {projection!r}"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and (
        state is None or state.startswith(("08", "57P"))
    ):
        return StorageUnavailable(
            f"{where}: lost the connection to PostgreSQL: {text}",
            operation=operation,
            sqlstate=state,
        )
    if state == "42501":
        return StorageError(
            f"{where}: {text}: a projection worker connects as a member of utcp_projector "
            "(docs/security.md)",
            operation=operation,
            sqlstate=state,
        )
    if state in _NOT_DEPLOYED:
        return SchemaNotDeployed(
            f"{where}: the utcp schema is missing or only partly deployed ({text}): "
            "run `eventstore db deploy`",
            operation=operation,
            sqlstate=state,
        )
    return StorageError(f"{where}: {text}", operation=operation, sqlstate=state)


@contextmanager
def mapped_errors(operation: str, projection: str) -> Iterator[None]:
    """Inside: a driver error leaves as :func:`projection_failure`'s error,
    chained to it; the store's own errors pass unchanged."""
    try:
        yield
    except psycopg.Error as exc:
        raise projection_failure(exc, operation, projection) from exc
