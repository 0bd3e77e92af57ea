"""The one retry boundary: around a whole unit of work.

A unit of work takes a connection from the pool, runs its statement (one
transaction: the connections are in autocommit and every write is a single
statement) and gives the connection back. Only transient failures are
retried; integrity errors never are. Whether a retried *write* is safe is
the caller's business: appends are made safe by event ids and idempotency
keys fixed before the first attempt.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import psycopg
import psycopg_pool
import stamina

from .settings import Settings

__all__ = ["call_budget", "call_deadline", "is_transient", "run_with_retries"]

T = TypeVar("T")

#: admin_shutdown, crash_shutdown, cannot_connect_now,
#: serialization_failure, deadlock_detected
TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "40001", "40P01"})

#: Backoff between attempts (seconds): doubling from WAIT_INITIAL up to
#: WAIT_MAX, plus up to WAIT_JITTER at random.
WAIT_INITIAL: Final = 0.05
WAIT_MAX: Final = 2.0
WAIT_JITTER: Final = 0.05

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "eventstore_call_deadline", default=None
)


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


def call_deadline() -> float | None:
    """The monotonic time by which the current call (run_with_retries)
    must end, if one is running in this context."""
    return _DEADLINE.get()


@contextmanager
def call_budget(settings: Settings) -> Iterator[float]:
    """Fix the current call's deadline now (``retry_timeout`` from here, or
    an outer call's, whichever ends first) and yield it: what runs inside,
    run_with_retries included, ends by then. For a call whose first attempt
    runs outside run_with_retries (an append that first goes in a group)."""
    deadline = time.monotonic() + settings.retry_timeout
    outer = _DEADLINE.get()
    if outer is not None:
        deadline = min(deadline, outer)
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def run_with_retries(
    settings: Settings,
    work: Callable[[int], T],
    *,
    on_retry: Callable[[Exception], None],
    first_attempt: int = 1,
) -> T:
    """Run ``work(attempt)`` (attempt counts from ``first_attempt``, 1
    unless an attempt already ran elsewhere) until it succeeds, a
    non-transient error occurs, or attempts/time run out. The last
    exception propagates unchanged; the caller maps it. It always makes at
    least one attempt.

    ``retry_timeout`` bounds the whole call, the last attempt included:
    another attempt starts only if its backoff ends before the budget does,
    and :func:`call_deadline` tells the attempts when the budget ends (the
    store caps its connection waits and round trips by it). Backoff is
    exponential with jitter; in stamina's test mode it is skipped.
    """
    now = time.monotonic()
    outer = _DEADLINE.get()
    deadline = now + settings.retry_timeout
    if outer is not None:
        deadline = min(deadline, outer)
    token = _DEADLINE.set(deadline)
    try:
        attempt = first_attempt - 1
        while True:
            attempt += 1
            try:
                return work(attempt)
            except Exception as exc:
                if attempt >= settings.retry_attempts or not is_transient(exc):
                    raise
                wait = 0.0
                if not stamina.is_testing():
                    backoff = min(WAIT_MAX, WAIT_INITIAL * 2 ** (attempt - 1))
                    wait = backoff + random.uniform(0, WAIT_JITTER)
                if time.monotonic() + wait >= deadline:
                    raise  # no time left for another attempt
                on_retry(exc)
            time.sleep(wait)
    finally:
        _DEADLINE.reset(token)
