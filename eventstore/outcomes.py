"""An append's database outcome, turned into its result or its error: the
one place that knows what ``utcp.append_events()`` answers mean."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from .codec import PreparedAppend
from .errors import (
    AppendOutcomeUnknown,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    WrongExpectedVersion,
    first_line,
)
from .events import AppendResult, ExpectedVersion

__all__ = [
    "duplicate_event_id",
    "key_conflict",
    "log_order_hazard",
    "outcome_unknown",
    "result",
    "wrong_version",
]


def result(row: tuple[Any, ...], request_id: uuid.UUID, key: str | None = None) -> AppendResult:
    """A row of utcp.append_events(): 'w' written now, 'k' the key's
    earlier result (the database has checked it was this very request)."""
    outcome, stored_stream, first, last, positions, stored_request = row
    if outcome == "k" and (positions is None or len(positions) != last - first + 1):
        # The key outlived its events: someone removed them from the log.
        raise IntegrityViolation(
            f"idempotency key recorded {stored_stream!r} v{first}..v{last}, but "
            f"{last - first + 1 - len(positions or ())} of those events are gone from the "
            "log: it was tampered with (run `eventstore verify`); nothing was written",
            operation="append",
            stream_id=stored_stream,
            idempotency_key=key,
        )
    # A key holding this call's request id was written by this call's
    # own earlier attempt: report the write, once, not a duplicate.
    duplicate = outcome == "k" and stored_request != request_id
    return AppendResult(stored_stream, first, last, tuple(positions), duplicate)


def key_conflict(exc: psycopg.Error, stream_id: str, key: str | None) -> IdempotencyConflict:
    """UT005: the database found the key used for another request (its
    fingerprint, computed there from the stored events, differs)."""
    return IdempotencyConflict(
        f"idempotency key {key!r} was already used for a different request "
        "(another stream or other events); nothing was written",
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=exc.sqlstate,
    )


def log_order_hazard(exc: psycopg.Error, stream_id: str, key: str | None) -> LogOrderHazard:
    message = first_line(exc)
    if exc.diag.message_hint:
        message = f"{message}. {exc.diag.message_hint}"
    return LogOrderHazard(
        message,
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=exc.sqlstate,
    )


def outcome_unknown(
    stream_id: str,
    prepared: PreparedAppend,
    key: str | None,
    exc: EventStoreError,
) -> AppendOutcomeUnknown:
    ids = prepared.event_ids
    shown = ", ".join(str(i) for i in ids[:3]) + (", …" if len(ids) > 3 else "")
    how = (
        f"repeat the call with the same idempotency key {key!r} (always safe: it writes "
        "once, and returns the first result with duplicate=True if it was written)"
        if key is not None
        else "look for its event ids in the stream (read_stream) before appending again: "
        "a repeat without an idempotency key could write the events twice"
    )
    return AppendOutcomeUnknown(
        f"the append of {len(ids)} event(s) to {stream_id!r} may or may not have been "
        f"written: the connection was lost after it was sent, and the store could not "
        f"find out within the retry budget ({exc.message}). Event ids: {shown}. To "
        f"resolve it, {how}",
        event_ids=ids,
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=exc.sqlstate,
    )


def wrong_version(
    actual: int | None,
    stream_id: str,
    expected: ExpectedVersion,
    key: str | None,
    cause: Exception,
) -> WrongExpectedVersion:
    return WrongExpectedVersion(
        f"stream {stream_id!r} moved on while appending: it is at version {actual}, "
        f"not {expected!r}",
        expected=expected,
        actual=actual,
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=getattr(cause, "sqlstate", None),
    )


def duplicate_event_id(exc: psycopg.Error, stream_id: str, key: str | None) -> DuplicateEventId:
    """An event id of the batch is already in the log (as another event)."""
    return DuplicateEventId(
        f"an event id of this batch is already in the log: "
        f"{exc.diag.message_detail or first_line(exc)}",
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=exc.sqlstate,
    )


def stale_version(
    exc: psycopg.Error, stream_id: str, expected: ExpectedVersion, key: str | None
) -> WrongExpectedVersion:
    """UT001: the stream is not at the expected version (the database says
    which version it is at)."""
    actual = int(exc.diag.message_detail or -1)
    return WrongExpectedVersion(
        f"stream {stream_id!r} is at version {actual}, not {expected!r}",
        expected=expected,
        actual=actual,
        operation="append",
        stream_id=stream_id,
        idempotency_key=key,
        sqlstate=exc.sqlstate,
    )
