"""Breaking an append on purpose: the suite's one fault injector, and a
killer of backends caught mid-append.

* :class:`FaultInjector` wraps ``psycopg.Connection.execute`` and raises a
  transient ``OperationalError`` (no SQLSTATE: what a lost connection looks
  like) before one of the store's statements is sent, or after it ran and
  committed — the reply lost on the way back.
* :data:`SLOW_TRIGGER` makes the insert of an event whose data has
  ``"slow": true`` sleep for a second, and :class:`Killer` terminates a
  backend while it sleeps there (before the commit), for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

#: Test-only: an event with ``"slow": true`` in its data takes a second to
#: insert, a window in which :class:`Killer` finds its backend.
SLOW_TRIGGER = """
CREATE FUNCTION public.test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(1);
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_insert BEFORE INSERT ON utcp.stored_events
    FOR EACH ROW WHEN ((NEW.data ->> 'slow') = 'true')
    EXECUTE FUNCTION public.test_slow_insert();
"""

#: How the direct writer's statements are recognised (eventstore/sql.py).
#: If the SQL changes, the injector stops firing and the tests using it
#: fail, loudly.
APPEND_MARK = "utcp.append_group("
LOOKUP_MARK = "WHERE event_id = ANY"


class FaultInjector:
    """Transient failures injected into the statements of one store (the
    one connecting with ``application_name``).

    ``plan`` holds one entry per statement of the store's append path
    (the append itself, and the retry's look-up of its own event ids), in
    order: "ok", "before" (fail without running it) or "after" (run it —
    autocommit, so it commits — then fail as if the reply was lost).
    Statements beyond the plan run normally. ``calls`` records what ran.
    """

    def __init__(self, application_name: str) -> None:
        self.application_name = application_name
        self.plan: list[str] = []
        self.calls: list[tuple[str, str]] = []

    def _kind(self, conn: psycopg.Connection[Any], query: object) -> str | None:
        if conn.info.parameter_status("application_name") != self.application_name:
            return None
        text = str(query)
        if APPEND_MARK in text:
            return "append"
        if LOOKUP_MARK in text:
            return "lookup"
        return None

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)

    def fired(self) -> int:
        return sum(1 for _, mode in self.calls if mode != "ok")

    @contextmanager
    def active(self, *plan: str) -> Iterator[FaultInjector]:
        self.plan = list(plan)
        self.calls = []
        real = psycopg.Connection.execute
        injector = self

        def execute(
            conn: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any
        ) -> Any:
            kind = injector._kind(conn, query)
            if kind is None:
                return real(conn, query, params, **kw)
            mode = injector.plan.pop(0) if injector.plan else "ok"
            injector.calls.append((kind, mode))
            if mode == "before":
                raise psycopg.OperationalError("injected: connection lost before sending")
            cur = real(conn, query, params, **kw)
            if mode == "after":
                raise psycopg.OperationalError("injected: connection lost before the reply")
            return cur

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(psycopg.Connection, "execute", execute)
            yield self


class Killer(threading.Thread):
    """Terminates, once, a backend of ``application_name`` in database
    ``dbname`` while it sleeps in :data:`SLOW_TRIGGER` (whatever statement
    the writer sent: the direct path's call or a group's), before its commit.
    ``admin_dsn`` must be allowed to terminate it (a superuser)."""

    def __init__(
        self, admin_dsn: str, dbname: str, application_name: str, timeout: float = 30.0
    ) -> None:
        super().__init__(daemon=True)
        self.admin_dsn = admin_dsn
        self.dbname = dbname
        self.application_name = application_name
        self.timeout = timeout
        self.killed: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                deadline = time.monotonic() + self.timeout
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name = %s "
                        "AND wait_event = 'PgSleep' AND state = 'active'",
                        (self.dbname, self.application_name),
                    ).fetchone()
                    if row is not None:
                        ok = conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone()
                        if ok is not None and ok[0]:
                            self.killed.append(int(row[0]))
                        return
                    time.sleep(0.01)
        except BaseException as exc:  # checked by the test
            self.error = exc
