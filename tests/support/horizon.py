"""Waiting for the global readers' horizon on a shared server.

A reader sees a committed event only once every transaction of the
*cluster* that is older than it has ended (docs/architecture.md, the
global order; docs/design.md §4, "Stalls"): a transaction held open in another
database of the same server — another session's test — holds every
database's readers back. That is latency, not loss, so a test that counts
what ``read_all`` or a projection has seen waits for the horizon to pass
the writes it made, explicitly and for long enough, and when it gives up it
names the session that held it back instead of failing on a short count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from eventstore import EventStore
from tests.support.database import pooled_connection

#: How long a test waits for the readers' horizon: generous, because a
#: session elsewhere on the shared server decides it, not the test.
HORIZON_TIMEOUT = 180.0

#: The last committed write's transaction id, and whether the horizon
#: (the oldest transaction id still running in the cluster) has passed it.
LAST_WRITE = "SELECT max(tx_id)::text FROM utcp.stored_events"
PASSED = "SELECT %s::xid8 < pg_snapshot_xmin(pg_current_snapshot())"
#: Whoever holds the horizon back (utcp.oldest_transaction() sees every
#: role's sessions, whatever role asks).
BLOCKER = (
    "SELECT pid, role_name, application_name, state, age_seconds FROM utcp.oldest_transaction()"
)

Source = EventStore | str


@contextmanager
def _connection(source: Source) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(source, EventStore):
        with pooled_connection(source) as conn:
            yield conn
    else:
        with psycopg.connect(source, autocommit=True) as conn:
            yield conn


def last_write(source: Source) -> str | None:
    """The transaction id (xid8, as text) of the newest committed write in
    the log; None while it is empty."""
    with _connection(source) as conn:
        row = conn.execute(LAST_WRITE).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def blocker(source: Source) -> str:
    """The session holding the readers' horizon back, for a failure message."""
    with _connection(source) as conn:
        row = conn.execute(BLOCKER).fetchone()
    if row is None or row[0] is None:
        return "no transaction is running now"
    pid, role, application, state, age = row
    return (
        f"backend pid {pid} (role {role!r}, application {application!r}, "
        f"state {state!r}, open for {float(age or 0):.0f} s)"
    )


def wait_for_horizon(
    source: Source, *, after: str | None = None, timeout: float = HORIZON_TIMEOUT
) -> None:
    """Wait until readers can see every write committed so far (or the
    write of transaction ``after``): until the cluster's oldest running
    transaction is younger than it. Writers that keep going after the call
    do not hold it up. Fails after ``timeout`` seconds naming the session
    that held the horizon back."""
    xid = after if after is not None else last_write(source)
    if xid is None:
        return
    deadline = time.monotonic() + timeout
    with _connection(source) as conn:
        while True:
            row = conn.execute(PASSED, (xid,)).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    raise AssertionError(
        f"after {timeout:g} s the readers' horizon had not passed transaction {xid} "
        f"(the test's last write): held back by {blocker(source)}, a transaction "
        "elsewhere on the shared server"
    )
