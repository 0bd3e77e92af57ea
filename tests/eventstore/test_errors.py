"""The store's errors: one hierarchy, each error's context in its message,
and driver failures translated (never escaping as psycopg exceptions)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from psycopg import errors as pg_errors

import eventstore
from eventstore import (
    NO_STREAM,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    SqitchError,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from eventstore.connection import map_error

ALL = [
    DuplicateEventId,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    SqitchError,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
]


def test_every_error_is_an_event_store_error() -> None:
    for cls in ALL:
        assert issubclass(cls, EventStoreError)
        assert getattr(eventstore, cls.__name__) is cls
    assert issubclass(StorageUnavailable, StorageError)
    assert issubclass(ValidationError, ValueError)


def test_str_includes_the_context() -> None:
    error = EventStoreError(
        "append failed",
        operation="append",
        stream_id="portfolio-42",
        idempotency_key="trade:7",
        sqlstate="40001",
    )
    text = str(error)
    assert text.startswith("append failed")
    for part in ("append", "portfolio-42", "trade:7", "40001"):
        assert part in text
    assert error.context() == {
        "operation": "append",
        "stream": "portfolio-42",
        "key": "trade:7",
        "sqlstate": "40001",
    }
    assert str(EventStoreError("plain")) == "plain"
    assert EventStoreError("plain").context() == {}


def test_validation_error_names_the_field() -> None:
    error = ValidationError(
        "bad", field="events[0].data.quantity", operation="append", stream_id="s-1"
    )
    assert error.field == "events[0].data.quantity"
    assert "events[0].data.quantity" in str(error)
    assert "s-1" in str(error)
    assert error.context()["field"] == "events[0].data.quantity"


def test_wrong_expected_version_carries_expected_and_actual() -> None:
    error = WrongExpectedVersion(
        "moved", expected=NO_STREAM, actual=3, operation="append", stream_id="s-1"
    )
    assert error.expected is NO_STREAM
    assert error.actual == 3
    text = str(error)
    assert "NO_STREAM" in text and "3" in text and "s-1" in text
    missing = WrongExpectedVersion("missing", expected=5, actual=0)
    assert "expected=5" in str(missing) and "actual=0" in str(missing)


def sqlstate_error(cls: type[psycopg.Error], message: str = "boom") -> psycopg.Error:
    return cls(message)


@pytest.mark.parametrize(
    ("exc", "expected", "sqlstate"),
    [
        (sqlstate_error(pg_errors.UniqueViolation), IntegrityViolation, "23505"),
        (sqlstate_error(pg_errors.CheckViolation), IntegrityViolation, "23514"),
        (sqlstate_error(pg_errors.InsufficientPrivilege), StorageError, "42501"),
        (sqlstate_error(pg_errors.UndefinedTable), SchemaNotDeployed, "42P01"),
        (sqlstate_error(pg_errors.UndefinedFunction), SchemaNotDeployed, "42883"),
        (sqlstate_error(pg_errors.InvalidSchemaName), SchemaNotDeployed, "3F000"),
        (sqlstate_error(pg_errors.SerializationFailure), StorageUnavailable, "40001"),
        (sqlstate_error(pg_errors.DeadlockDetected), StorageUnavailable, "40P01"),
        (sqlstate_error(pg_errors.AdminShutdown), StorageUnavailable, "57P01"),
        (sqlstate_error(pg_errors.InvalidTextRepresentation), ValidationError, "22P02"),
        (sqlstate_error(pg_errors.UntranslatableCharacter), ValidationError, "22P05"),
        (sqlstate_error(pg_errors.QueryCanceled), StorageError, "57014"),
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            StorageUnavailable,
            None,
        ),
    ],
)
def test_driver_errors_become_store_errors(
    exc: Exception, expected: type[EventStoreError], sqlstate: str | None
) -> None:
    error = map_error(exc, "append", stream_id="s-1", idempotency_key="k-1")
    assert type(error) is expected
    assert not isinstance(error, psycopg.Error)
    assert error.sqlstate == sqlstate
    assert (error.operation, error.stream_id, error.idempotency_key) == ("append", "s-1", "k-1")
    assert "s-1" in str(error) and "append" in str(error)


def test_pool_errors_become_store_errors() -> None:
    timeout = map_error(psycopg_pool.PoolTimeout("no connection in 10 s"), "read_all")
    assert isinstance(timeout, StorageUnavailable)
    assert timeout.operation == "read_all"
    closed = map_error(psycopg_pool.PoolClosed("closed"), "append", stream_id="s")
    assert type(closed) is StorageError
    assert "closed" in str(closed)


def test_store_errors_pass_through_unchanged() -> None:
    error = IdempotencyConflict("conflict", idempotency_key="k")
    assert map_error(error, "append") is error


def test_only_the_first_line_of_a_driver_message_is_kept() -> None:
    exc = pg_errors.CheckViolation("new row violates check\nDETAIL: Failing row contains (...)")
    error = map_error(exc, "append")
    assert "DETAIL" not in error.message
    assert "new row violates check" in error.message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:Sup3rSecret@[::1/utcp",  # libpq quotes the whole URI
        "postgresql://app:Sup3rSecret%zz@127.0.0.1/utcp",  # libpq quotes the bad token
        "host=127.0.0.1 password=Sup3rSecret sslpassword=Sup3rSecret what",
    ],
)
def test_a_malformed_dsn_error_shows_no_secret(dsn: str) -> None:
    with pytest.raises(ValidationError) as info:
        eventstore.EventStore.open(dsn)
    error = info.value
    assert error.field == "dsn" and "malformed DSN" in str(error)
    for shown in (str(error), repr(error), str(error.__cause__), repr(error.__cause__)):
        assert "Sup3rSecret" not in shown
    assert error.__context__ is None


def test_a_failed_connection_shows_no_secret() -> None:
    with pytest.raises(StorageUnavailable) as info:
        eventstore.EventStore.open("postgresql://app:Sup3rSecret@127.0.0.1:notaport/utcp")
    for shown in (str(info.value), repr(info.value), repr(info.value.__cause__)):
        assert "Sup3rSecret" not in shown
