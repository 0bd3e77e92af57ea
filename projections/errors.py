"""Errors of the projections (all :class:`eventstore.EventStoreError`)."""

from __future__ import annotations

from typing import Any

from eventstore import EventStoreError, RawStoredEvent, StoredEvent

__all__ = ["CheckpointMoved", "ProjectionError"]


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
