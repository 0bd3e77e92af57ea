"""The one retry boundary: around a whole unit of work.

A unit of work takes a connection from the pool, runs its statement (one
transaction: the connections are in autocommit and every write is a single
statement) and gives the connection back. Only transient failures are
retried; integrity errors never are. Whether a retried *write* is safe is
the caller's business: appends are made safe by event ids and idempotency
keys fixed before the first attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import psycopg
import psycopg_pool
import stamina

from .settings import Settings

__all__ = ["is_transient", "run_with_retries"]

T = TypeVar("T")

#: admin_shutdown, crash_shutdown, cannot_connect_now,
#: serialization_failure, deadlock_detected
TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "40001", "40P01"})


def is_transient(exc: Exception) -> bool:
    """Worth another attempt: the connection went away, the server is
    restarting, the pool had no connection in time, or PostgreSQL asked
    for a retry (serialization failure, deadlock)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    if isinstance(exc, psycopg_pool.PoolClosed):
        return False
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # No SQLSTATE: the client lost the connection (server gone,
            # socket closed, backend terminated before it could reply).
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    return False


def run_with_retries(
    settings: Settings, work: Callable[[int], T], *, on_retry: Callable[[Exception], None]
) -> T:
    """Run ``work(attempt)`` (attempt counts from 1) until it succeeds, a
    non-transient error occurs, or attempts/time run out. The last
    exception propagates unchanged; the caller maps it.

    The first attempt runs outside stamina: its wrapper costs tens of
    microseconds, and the first attempt almost always succeeds.
    """
    try:
        return work(1)
    except Exception as exc:
        if settings.retry_attempts <= 1 or not is_transient(exc):
            raise
        on_retry(exc)
    attempt = 1
    for retry in stamina.retry_context(
        on=is_transient,
        attempts=settings.retry_attempts - 1,
        timeout=settings.retry_timeout,
        wait_initial=0.05,
        wait_max=2.0,
    ):
        with retry:
            attempt += 1
            try:
                return work(attempt)
            except Exception as exc:
                if is_transient(exc) and attempt < settings.retry_attempts:
                    on_retry(exc)
                raise
    raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover
