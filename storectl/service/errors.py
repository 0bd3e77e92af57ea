"""The store's errors as HTTP answers: a status, one line of text, and for
503 a Retry-After. Nothing else of an exception (no traceback, no driver
message beyond its first line) reaches a client."""

from __future__ import annotations

import msgspec

from eventstore.errors import (
    AppendOutcomeUnknown,
    CheckpointNotInLog,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from projections.errors import ProjectionError

__all__ = ["Answer", "ToolError", "answer_for", "one_line"]


class ToolError(Exception):
    """An error a tool raises with its own status (404 for an unknown record…)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Answer(msgspec.Struct, frozen=True):
    status: int
    message: str
    #: "validation", "not_found", "conflict", "unavailable", "unknown_outcome",
    #: "timeout", "internal": the metrics' outcome label.
    outcome: str
    retry_after: bool = False


def one_line(text: str) -> str:
    """``text`` on one line (the assistant shows it verbatim as its error)."""
    return " ".join(text.split()) or "error"


def answer_for(exc: BaseException, tool: str, request_id: str) -> Answer:
    """What the client is told about ``exc`` (raised by ``tool``)."""
    if isinstance(exc, ToolError):
        outcome = {404: "not_found", 409: "conflict", 503: "unavailable"}.get(
            exc.status, "validation"
        )
        return Answer(exc.status, one_line(exc.message), outcome)
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        return Answer(400, one_line(f"{tool}: invalid input: {exc}"), "validation")
    if isinstance(exc, RecursionError):
        # msgspec's decoder past its depth limit: a hostile or broken body
        return Answer(400, f"{tool}: invalid input: JSON nested too deeply", "validation")
    if isinstance(exc, ValidationError):
        text = exc.message if exc.message.startswith(tool) else f"{tool}: {exc}"
        return Answer(400, one_line(text), "validation")
    if isinstance(exc, AppendOutcomeUnknown):
        return Answer(
            503,
            one_line(
                f"{tool}: the database connection was lost before the store could confirm the "
                "write: it may or may not have been recorded. Repeating the same call is safe "
                "(every tool call carries an idempotency key: it is written at most once)"
            ),
            "unknown_outcome",
            retry_after=True,
        )
    if isinstance(
        exc,
        WrongExpectedVersion
        | IdempotencyConflict
        | DuplicateEventId
        | CheckpointNotInLog
        | IntegrityViolation,
    ):
        text = exc.message if exc.message.startswith(tool) else f"{tool}: {exc}"
        return Answer(409, one_line(text), "conflict")
    if isinstance(exc, StorageUnavailable | SchemaNotDeployed | LogOrderHazard):
        return Answer(
            503,
            one_line(f"{tool}: storage unavailable, try again later: {exc.message}"),
            "unavailable",
            retry_after=True,
        )
    if isinstance(exc, TimeoutError):
        return Answer(
            504,
            one_line(
                f"{tool}: the call did not finish within the time limit; it may still complete. "
                "Repeating the same call is safe (it is written at most once)"
            ),
            "timeout",
        )
    if isinstance(exc, ProjectionError):
        # the log holds an event the trading rules refuse (the projection stops there too)
        return Answer(409, one_line(f"{tool}: {exc}"), "conflict")
    if isinstance(exc, EventStoreError) and exc.sqlstate == "42501":
        return Answer(
            403,
            one_line(f"{tool}: the database refused it to the service's role: {exc.message}"),
            "forbidden",
        )
    kind = "storage error" if isinstance(exc, EventStoreError) else "internal error"
    return Answer(
        500, f"{tool}: {kind} (request id {request_id}; see the service's log)", "internal"
    )
