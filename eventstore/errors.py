"""The store's own errors.

Every error raised by the public API is an :class:`EventStoreError`. Each one
carries the context a person needs to act on it (operation, stream,
idempotency key, SQLSTATE) and chains the exception that caused it, so no
psycopg exception ever escapes on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AppendOutcomeUnknown",
    "CheckpointNotInLog",
    "DuplicateEventId",
    "EventStoreError",
    "IdempotencyConflict",
    "IntegrityViolation",
    "LogOrderHazard",
    "SchemaNotDeployed",
    "SqitchError",
    "StorageError",
    "StorageUnavailable",
    "ValidationError",
    "WrongExpectedVersion",
]


class EventStoreError(Exception):
    """Base class of every error the event store raises."""

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        stream_id: str | None = None,
        idempotency_key: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.stream_id = stream_id
        self.idempotency_key = idempotency_key
        self.sqlstate = sqlstate

    def context(self) -> dict[str, Any]:
        """The error's context as a dict (empty values left out)."""
        items = {
            "operation": self.operation,
            "stream": self.stream_id,
            "key": self.idempotency_key,
            "sqlstate": self.sqlstate,
        }
        return {k: v for k, v in items.items() if v is not None}

    def __str__(self) -> str:
        ctx = ", ".join(f"{k}={v!r}" for k, v in self.context().items())
        return f"{self.message} ({ctx})" if ctx else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickling calls type(self)(*self.args), which the
        # keyword-only context of the subclasses does not survive: rebuild
        # without __init__, then restore every attribute (message, context).
        return (_unpickle, (type(self), self.args), self.__dict__)


class ValidationError(EventStoreError, ValueError):
    """Bad input: nothing was written. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.field = field

    def context(self) -> dict[str, Any]:
        base = super().context()
        return {"field": self.field, **base} if self.field else base


class WrongExpectedVersion(EventStoreError):
    """The stream was not at the version the caller expected."""

    def __init__(self, message: str, *, expected: object, actual: int | None, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.expected = expected
        self.actual = actual

    def context(self) -> dict[str, Any]:
        return {**super().context(), "expected": self.expected, "actual": self.actual}


class IdempotencyConflict(EventStoreError):
    """The idempotency key was already used for a different request."""


class DuplicateEventId(EventStoreError):
    """An event id given by the caller is already in the log."""


class IntegrityViolation(EventStoreError):
    """The database refused a write that would break one of the log's invariants."""


class LogOrderHazard(EventStoreError):
    """Appending now could write events that global readers would never see.

    Raised after a logical restore into a new cluster, whose transaction ids
    are behind the ones stored in the log. See docs/runbook.md, "Restores".
    """


class CheckpointNotInLog(EventStoreError):
    """``read_all(after=…)`` names an event that is not in this log.

    A checkpoint is always some event's; when that event is gone, the log
    was restored to a point before it (point-in-time recovery, an older
    dump), and paging on from it would silently miss or never deliver the
    events appended since. ``checkpoint`` is the one refused. A projection
    must be rebuilt (``eventstore project rebuild``); a plain reader starts
    again from a checkpoint that is in the log. See docs/runbook.md, "Restores".
    """

    def __init__(self, message: str, *, checkpoint: str, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.checkpoint = checkpoint

    def context(self) -> dict[str, Any]:
        return {**super().context(), "checkpoint": self.checkpoint}


class SchemaNotDeployed(EventStoreError):
    """The ``utcp`` schema is missing or incomplete: run ``eventstore db deploy``."""


class StorageError(EventStoreError):
    """A database failure that is not transient (or not known to be)."""


class StorageUnavailable(StorageError):
    """A transient failure (connection lost, shutdown, pool timeout, …) that
    outlived the retries."""


class AppendOutcomeUnknown(StorageError):
    """An append may or may not have been written: an attempt reached the
    server (its statement was sent), the connection was lost before the
    reply, and the store could not find out afterwards (no connection within
    the retry budget). Not a :class:`StorageUnavailable`: repeating the call
    blindly could write the events twice.

    ``event_ids`` are the batch's ids (as they would be stored),
    ``idempotency_key`` the call's key. To resolve: look the event ids up in
    the log (``read_stream``), or repeat the call with the same
    ``idempotency_key`` (always safe: it writes once and returns the first
    result with ``duplicate=True``).
    """

    def __init__(self, message: str, *, event_ids: tuple[Any, ...], **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.event_ids = event_ids

    def context(self) -> dict[str, Any]:
        return {**super().context(), "events": len(self.event_ids)}


class SqitchError(EventStoreError):
    """Sqitch is missing, or a Sqitch command failed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty):
    what one-line errors quote of a driver's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickle(cls: type[EventStoreError], args: tuple[Any, ...]) -> EventStoreError:
    """An error of ``cls`` with ``args``, before its attributes are restored
    (:meth:`EventStoreError.__reduce__`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error
