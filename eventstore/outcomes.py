"""An append's database outcome, turned into its result or its error: the
one place that knows what the answers of ``utcp.append_group()`` (one row
per request) and ``utcp.append_events()`` (a row, or an error) mean."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from .codec import PreparedAppend
from .errors import (
    AppendOutcomeUnknown,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    StorageError,
    ValidationError,
    WrongExpectedVersion,
    first_line,
)
from .events import AppendResult, ExpectedVersion

__all__ = [
    "AppendRequest",
    "Outcome",
    "duplicate_event_id",
    "invalid",
    "key_conflict",
    "log_order_hazard",
    "outcome_unknown",
    "read_group",
    "result",
    "settle",
    "wrong_version",
]


@dataclass(slots=True, frozen=True)
class AppendRequest:
    """One append as the write path carries it, validated and encoded,
    everything fixed before its first attempt (the retries send the same)."""

    stream_id: str
    #: what the append functions take as p_expected (None: any version)
    expected: int | None
    #: as the caller gave it (for the error it may get)
    expected_version: ExpectedVersion
    key: str | None
    #: a nonce per call: tells a retry its own earlier commit from another's
    request_id: uuid.UUID
    prepared: PreparedAppend
    #: monotonic time by which the call must end (its retry budget)
    deadline: float

    @property
    def events(self) -> int:
        return len(self.prepared.event_ids)

    @property
    def size(self) -> int:
        return len(self.prepared.payload)


@dataclass(slots=True, frozen=True)
class Outcome:
    """One request's row of utcp.append_group() (sqitch/deploy/
    append_group.sql): ``code`` 'w' written now, 'k' the key's earlier
    result, 'v' wrong expected version, 'c' key used for another request,
    'i' refused event, 'd' event id already stored, 'a' not allowed."""

    code: str
    stream_id: str | None
    first_version: int | None
    last_version: int | None
    positions: list[int] | None
    request_id: uuid.UUID | None
    actual_version: int | None
    event_id: uuid.UUID | None
    message: str | None

    @property
    def written(self) -> bool:
        return self.code == "w"


#: The outcome codes utcp.append_group() answers with.
CODES: Final = frozenset("wkvcida")


def read_group(rows: Sequence[Sequence[Any]], requests: int) -> list[Outcome]:
    """The rows of one utcp.append_group() call, one per request in request
    order (its ``request`` column counts them from 1), as Outcomes. Anything
    else is a protocol error (StorageError): the statement ran, so the
    caller must treat the group as possibly written."""
    if len(rows) != requests or any(
        row[0] != i or row[1] not in CODES for i, row in enumerate(rows, 1)
    ):
        raise StorageError(
            f"utcp.append_group() answered {len(rows)} row(s) out of order or with unknown "
            f"outcomes for {requests} request(s): is the schema this version's?",
            operation="append",
        )
    return [Outcome(*row[1:]) for row in rows]


def settle(request: AppendRequest, outcome: Outcome) -> AppendResult:
    """A request's outcome: its result, or its error raised."""
    code = outcome.code
    stream, key = request.stream_id, request.key
    if code in "wk":
        assert outcome.first_version is not None and outcome.last_version is not None
        return result(
            (
                code,
                outcome.stream_id,
                outcome.first_version,
                outcome.last_version,
                outcome.positions,
                outcome.request_id,
            ),
            request.request_id,
            key,
        )
    message = outcome.message or ""
    if code == "v":
        actual = outcome.actual_version
        raise WrongExpectedVersion(
            f"stream {stream!r} is at version {actual}, not {request.expected_version!r}",
            expected=request.expected_version,
            actual=actual,
            operation="append",
            stream_id=stream,
            idempotency_key=key,
            sqlstate="UT001",
        )
    if code == "c":
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different request "
            "(another stream or other events); nothing was written",
            operation="append",
            stream_id=stream,
            idempotency_key=key,
            sqlstate="UT005",
        )
    if code == "i":
        raise invalid(
            message, operation="append", stream_id=stream, idempotency_key=key, sqlstate="UT004"
        )
    if code == "d":
        raise DuplicateEventId(
            f"{message}; nothing of this batch was written",
            operation="append",
            stream_id=stream,
            idempotency_key=key,
            sqlstate="23505",
        )
    raise StorageError(  # 'a'
        f"permission denied: {message}",
        operation="append",
        stream_id=stream,
        idempotency_key=key,
        sqlstate="42501",
    )


def invalid(message: str, **ctx: Any) -> ValidationError:
    """A refusal by the database (UT004, or outcome 'i'): its message names
    the field first, "events[2].data.x: ..."."""
    field, sep, text = message.partition(": ")
    if sep and field and " " not in field:
        return ValidationError(f"{field}: {text}", field=field, **ctx)
    return ValidationError(message, **ctx)


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
