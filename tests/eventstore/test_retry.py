"""Which failures are retried, and how run_with_retries counts and stops.

No database: the errors are built by hand, as psycopg and the pool raise them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import psycopg_pool
import pytest
import stamina
from psycopg import errors as pg_errors

from eventstore import Settings, WrongExpectedVersion
from eventstore.retry import call_deadline, is_transient, run_with_retries


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """stamina's test mode without its attempt override: ``cap=True`` with a
    large cap keeps the attempts the code asks for, and only drops the
    backoff sleeps (and the time budget, which these tests do not use)."""
    with stamina.set_testing(True, attempts=10_000, cap=True):
        yield


TRANSIENT: list[Exception] = [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.InterfaceError("the connection is lost"),
    pg_errors.AdminShutdown("terminating connection due to administrator command"),
    pg_errors.CrashShutdown("terminating connection because of crash of another server process"),
    pg_errors.CannotConnectNow("the database system is starting up"),
    pg_errors.ConnectionFailure("connection failure"),
    pg_errors.SerializationFailure("could not serialize access"),
    pg_errors.DeadlockDetected("deadlock detected"),
    psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec"),
]

NOT_TRANSIENT: list[Exception] = [
    pg_errors.UniqueViolation("duplicate key value violates unique constraint"),
    pg_errors.CheckViolation("new row violates check constraint"),
    pg_errors.ForeignKeyViolation("violates foreign key constraint"),
    pg_errors.QueryCanceled("canceling statement due to statement timeout"),
    pg_errors.RaiseException("raised by a function"),
    pg_errors.InsufficientPrivilege("permission denied"),
    pg_errors.UndefinedTable("relation does not exist"),
    pg_errors.DiskFull("could not extend file"),  # an OperationalError with a SQLSTATE
    psycopg_pool.PoolClosed("the pool is closed"),
    WrongExpectedVersion("stream moved", expected=1, actual=2),
    ValueError("not a database error"),
    RuntimeError("bug"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_are_retried(exc: Exception) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize("exc", NOT_TRANSIENT, ids=lambda e: type(e).__name__)
def test_integrity_and_other_errors_are_not_retried(exc: Exception) -> None:
    assert is_transient(exc) is False


def test_operational_error_without_sqlstate_is_what_a_lost_connection_looks_like() -> None:
    exc = psycopg.OperationalError("consuming input failed: server closed the connection")
    assert exc.sqlstate is None
    assert is_transient(exc)


class Flaky:
    """``work(attempt)`` that raises the given errors in turn, then returns."""

    def __init__(self, *errors: Exception, result: str = "done") -> None:
        self.errors = list(errors)
        self.result = result
        self.attempts: list[int] = []
        self.raised: list[Exception] = []

    def __call__(self, attempt: int) -> str:
        self.attempts.append(attempt)
        if self.errors:
            exc = self.errors.pop(0)
            self.raised.append(exc)
            raise exc
        return self.result


def lost() -> psycopg.OperationalError:
    return psycopg.OperationalError("connection lost")


@pytest.mark.usefixtures("no_backoff")
def test_success_on_first_attempt_runs_once() -> None:
    work = Flaky()
    seen: list[Exception] = []
    assert run_with_retries(Settings(retry_attempts=5), work, on_retry=seen.append) == "done"
    assert work.attempts == [1]
    assert seen == []


@pytest.mark.usefixtures("no_backoff")
def test_transient_failures_are_retried_until_success_with_attempt_numbers() -> None:
    work = Flaky(lost(), pg_errors.SerializationFailure("retry"), lost())
    seen: list[Exception] = []
    assert run_with_retries(Settings(retry_attempts=5), work, on_retry=seen.append) == "done"
    assert work.attempts == [1, 2, 3, 4]
    assert seen, "a retry must be reported to on_retry"
    assert seen[0] is work.raised[0]


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
def test_attempts_are_bounded_and_the_last_error_is_reraised_unchanged(attempts: int) -> None:
    work = Flaky(*(lost() for _ in range(attempts + 3)))
    with pytest.raises(psycopg.OperationalError) as info:
        run_with_retries(Settings(retry_attempts=attempts), work, on_retry=lambda e: None)
    assert work.attempts == list(range(1, attempts + 1))
    assert info.value is work.raised[-1]


@pytest.mark.usefixtures("no_backoff")
def test_a_non_transient_error_stops_at_once_on_the_first_attempt() -> None:
    unique = pg_errors.UniqueViolation("duplicate key")
    work = Flaky(unique)
    seen: list[Exception] = []
    with pytest.raises(pg_errors.UniqueViolation) as info:
        run_with_retries(Settings(retry_attempts=5), work, on_retry=seen.append)
    assert info.value is unique
    assert work.attempts == [1]
    assert seen == []


@pytest.mark.usefixtures("no_backoff")
def test_a_non_transient_error_after_a_retry_stops_the_retries() -> None:
    conflict = WrongExpectedVersion("stream moved", expected=0, actual=1)
    work = Flaky(lost(), conflict, lost())
    with pytest.raises(WrongExpectedVersion) as info:
        run_with_retries(Settings(retry_attempts=5), work, on_retry=lambda e: None)
    assert info.value is conflict
    assert work.attempts == [1, 2]


@pytest.mark.usefixtures("no_backoff")
def test_pool_timeout_is_retried_and_pool_closed_is_not() -> None:
    work = Flaky(psycopg_pool.PoolTimeout("busy"))
    assert run_with_retries(Settings(retry_attempts=2), work, on_retry=lambda e: None) == "done"
    assert work.attempts == [1, 2]

    closed = psycopg_pool.PoolClosed("closed")
    work = Flaky(closed)
    with pytest.raises(psycopg_pool.PoolClosed) as info:
        run_with_retries(Settings(retry_attempts=5), work, on_retry=lambda e: None)
    assert info.value is closed
    assert work.attempts == [1]


def test_total_retry_time_bounds_the_attempts() -> None:
    """Real backoff (no test mode): a 0.2 s budget ends the retries long
    before 1000 attempts, and the last transient error surfaces."""
    work = Flaky(*(lost() for _ in range(1000)))
    with pytest.raises(psycopg.OperationalError) as info:
        run_with_retries(
            Settings(retry_attempts=1000, retry_timeout=0.2), work, on_retry=lambda e: None
        )
    assert 2 <= len(work.attempts) < 1000
    assert info.value is work.raised[-1]


def test_without_test_mode_attempts_are_counted_the_same() -> None:
    """The attempt count must not depend on stamina's test mode."""
    work = Flaky(lost(), lost())
    with pytest.raises(psycopg.OperationalError):
        run_with_retries(
            Settings(retry_attempts=2, retry_timeout=5.0), work, on_retry=lambda e: None
        )
    assert work.attempts == [1, 2]


def test_the_call_deadline_is_the_retry_budget_and_bounds_the_last_attempt() -> None:
    """Attempts see the call's deadline (the store caps its waits by it), and
    no attempt starts whose backoff would end past it."""
    budget = 0.5
    seen: list[float | None] = []

    def slow(attempt: int) -> str:
        seen.append(call_deadline())
        time.sleep(0.1)
        raise lost()

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        run_with_retries(
            Settings(retry_attempts=1000, retry_timeout=budget), slow, on_retry=lambda e: None
        )
    elapsed = time.monotonic() - started
    assert elapsed < budget + 1.0  # generous: the last attempt started within the budget
    assert seen and all(d is not None and d <= started + budget + 0.01 for d in seen)
    assert call_deadline() is None  # only inside a call
