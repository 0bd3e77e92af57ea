"""Client-side deadlines for round trips to PostgreSQL.

Server-side timeouts (statement_timeout) and TCP keepalives do not end a
wait on a network that stays open but carries nothing: a proxy or NAT box
whose kernel still ACKs, a peer that froze. So every unit of work runs under
a deadline kept here: when it passes, the watchdog shuts the connection's
socket down (``shutdown(SHUT_RDWR)``, from its own thread). The thread
waiting in libpq then sees the connection lost at once, psycopg raises an
``OperationalError`` (no SQLSTATE: a lost connection, transient), and the
connection is closed, so the pool discards it.

One daemon thread per process, started on first use, looks at the guarded
connections every TICK seconds. Only connections in use are registered
(at most the pools' sizes), so a look is cheap, and registering one is a
dict insertion under a lock.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any, Final

import psycopg

__all__ = ["TICK", "DeadlineExceeded", "guard"]

#: How often the watchdog looks at the deadlines (seconds): a deadline ends
#: a wait at most this much late.
TICK: Final = 0.1


class DeadlineExceeded(psycopg.OperationalError):
    """A round trip outlived its client-side deadline; the connection was
    abandoned. No SQLSTATE: to the retry logic it is a lost connection."""


class _Entry:
    __slots__ = ("conn", "deadline", "expired")

    def __init__(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.expired = False


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count()
        self._pid = 0  # the process the thread runs in (none yet: 0)

    def register(self, conn: psycopg.Connection[Any], deadline: float) -> tuple[int, _Entry]:
        entry = _Entry(conn, deadline)
        key = next(self._ids)
        with self._lock:
            self._entries[key] = entry
            if self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                threading.Thread(
                    target=self._watch, name="eventstore-watchdog", daemon=True
                ).start()
        return key, entry

    def unregister(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                due = [k for k, e in self._entries.items() if e.deadline <= now]
                for key in due:
                    entry = self._entries.pop(key)
                    entry.expired = True
                    # Under the lock: the connection is still in its
                    # guard's hands, not back in a pool or closed.
                    _shut_down(entry.conn)


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # already closed or broken
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()  # the descriptor stays libpq's


_WATCHDOG: Final = _Watchdog()


class guard:
    """Run the block's round trips on ``conn`` under a deadline ``seconds``
    from now. Past it, the connection is shut down and closed, and the
    block's error becomes :class:`DeadlineExceeded`. (A class, not a
    generator: it sits on the append's path.)"""

    __slots__ = ("_conn", "_entry", "_key", "_seconds")

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self._conn = conn
        self._seconds = seconds

    def __enter__(self) -> None:
        self._key, self._entry = _WATCHDOG.register(
            self._conn, time.monotonic() + max(0.0, self._seconds)
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _WATCHDOG.unregister(self._key)
        if not self._entry.expired:
            return
        # Shut down under the block (or as its reply came): never reused.
        self._conn.close()
        if isinstance(exc, psycopg.Error):
            raise DeadlineExceeded(
                f"no reply from the server within {self._seconds:.1f} s: connection "
                "abandoned (a silent network or a frozen peer)"
            ) from exc
