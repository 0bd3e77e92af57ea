"""An operator's decision that a projection passes over one event its
rules refuse (``eventstore project skip``): checked, then recorded in the
log as a ProjectionEventSkipped in ``projection-<name>``, where every live
worker and every rebuild finds it (docs/runbook.md, "Skip decisions")."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from eventstore import EventStore, NewEvent, StorageError, ValidationError
from trading import ProjectionEventSkipped

from . import sql
from .runner import skip_stream
from .status import projection_status

__all__ = ["SkipDecision", "skip_event"]


class SkipDecision(msgspec.Struct, frozen=True):
    """The decision for one event, as it stands after :func:`skip_event`."""

    projection: str
    event_id: uuid.UUID
    #: The event: "TradeExecuted, portfolio-42 v7, position 1234".
    event: str
    reason: str
    actor: str
    #: False when an operator had decided already (reason and actor are
    #: that earlier decision's; nothing was written).
    recorded: bool
    #: Whether the projection is stopped at this event now.
    stopped_here: bool


def skip_event(
    store: EventStore, name: str, event_id: uuid.UUID | str, *, reason: str, actor: str
) -> SkipDecision:
    """Record that projection ``name`` passes over event ``event_id`` when
    its rules refuse it. Only a member of utcp_operator (or a superuser)
    decides: another role's decision would be ignored, so it is refused
    here, before anything is written. An event the rules accept is never
    dropped."""
    operation = "skip"
    if not isinstance(event_id, uuid.UUID):
        try:
            event_id = uuid.UUID(str(event_id))
        except ValueError:
            raise ValidationError(
                f"not an event id: {event_id!r}", field="event_id", operation=operation
            ) from None
    found = store.query(operation, sql.EVENT_BY_ID, (event_id,))
    if not found:
        raise ValidationError(
            f"no event {event_id} in the log", field="event_id", operation=operation
        )
    stream_id, version, position, event_type = found[0]
    what = f"{event_type}, {stream_id} v{version}, position {position}"
    earlier = store.query(
        operation,
        sql.SKIP_DECISION,
        (skip_stream(name), ProjectionEventSkipped.EVENT_TYPE, str(event_id)),
    )
    stopped_here = projection_status(store, name).last_error_event == event_id
    if earlier:
        return SkipDecision(
            projection=name,
            event_id=event_id,
            event=what,
            reason=str(earlier[0][0]),
            actor=str(earlier[0][1]),
            recorded=False,
            stopped_here=stopped_here,
        )
    role, operator = store.query(operation, sql.SKIP_ROLE, ())[0]
    if not operator:
        raise StorageError(
            f"permission denied: role {role} may not decide what projection {name!r} passes "
            "over; connect as a member of utcp_operator (docs/runbook.md, 'Skip decisions')",
            operation=operation,
        )
    decision = ProjectionEventSkipped(
        projection=name,
        event_id=event_id,
        reason=reason,
        actor=actor,
        occurred_at=dt.datetime.now(dt.UTC),
    )
    # The key names the recording role: another role's earlier (ignored)
    # decision for this event must not stand in for this one as a duplicate.
    store.append(
        skip_stream(name),
        [NewEvent(ProjectionEventSkipped.EVENT_TYPE, decision)],
        idempotency_key=f"skip:{name}:{event_id}:{role}",
    )
    return SkipDecision(
        projection=name,
        event_id=event_id,
        event=what,
        reason=reason,
        actor=actor,
        recorded=True,
        stopped_here=stopped_here,
    )
