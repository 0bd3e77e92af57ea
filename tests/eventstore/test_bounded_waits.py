"""Waits that end and outcomes that are honest, under an unlucky network.

A small TCP proxy on loopback sits between the store and PostgreSQL and
fails the network on demand:

* ``silent()``: the sockets stay open (the kernel still ACKs) but nothing
  is forwarded, either way — a dropped NAT entry, a frozen peer;
* ``cut_next_reply(refuse_for)``: the client's statement goes through, the
  server's reply does not: both sides are closed when it arrives (so the
  server has committed), and new connections are refused for a while;
* ``refuse()`` / ``forward()``: an outage (every connection closed, new
  ones refused) and its end.

A frozen projection worker is a real subprocess that stops itself
(SIGSTOP) inside its batch transaction.

Only generous "ends within its bound + a margin" checks; no timed asserts
otherwise; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore import (
    AppendOutcomeUnknown,
    EventStore,
    NewEvent,
    Settings,
    StorageError,
    StorageUnavailable,
)
from eventstore.watchdog import DeadlineExceeded
from projections.runner import ProjectionRunner
from tests.support.database import WAIT, wait_until
from tests.support.horizon import wait_for_horizon
from tests.support.threads import line_queue

#: A generous bound for things that take well under a second.
#: Slack on top of a documented bound (scheduling on a busy 2-core machine).
MARGIN = 5.0


class Proxy:
    """A loopback TCP proxy to the test's PostgreSQL that can fail on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.mode = "forward"  # forward | silent | refuse
        self.refuse_until = 0.0
        self.cut_armed = False
        self.refuse_for = 0.0
        self.accepted = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    # -- control --------------------------------------------------------------

    def forward(self) -> None:
        self.mode, self.refuse_until = "forward", 0.0

    def silent(self) -> None:
        self.mode = "silent"

    def refuse(self) -> None:
        """An outage: every connection closed, new ones refused until forward()."""
        self.mode = "refuse"
        self._drop_all()

    def cut_next_reply(self, refuse_for: float) -> None:
        """Forward the client's next statement, but not the server's reply:
        close every connection when it arrives, then refuse new ones for
        ``refuse_for`` seconds."""
        self.refuse_for = refuse_for
        self.cut_armed = True

    def refusing(self) -> bool:
        return self.mode == "refuse" or time.monotonic() < self.refuse_until

    def dsn(self, dsn: str) -> str:
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)

    def close(self) -> None:
        self._closed.set()
        self._drop_all()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- the work ----------------------------------------------------------------

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            thread = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        other = {client: server, server: client}
        while not self._closed.is_set():
            with self._lock:
                if (client, server) not in self._pairs:
                    return  # dropped
            if self.mode == "silent":
                time.sleep(0.05)  # keep the sockets, forward nothing
                continue
            try:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                if self.mode == "silent":
                    continue  # switched while waiting: read nothing
                for sock in ready:
                    data = sock.recv(65536)
                    if data and sock is server and self.cut_armed:
                        self.cut_armed = False
                        self.cuts += 1
                        self.refuse_until = time.monotonic() + self.refuse_for
                        self._drop_all()
                        return
                    if not data:
                        raise OSError("closed")
                    other[sock].sendall(data)
            except (OSError, ValueError):
                with self._lock:
                    if (client, server) in self._pairs:
                        self._pairs.remove((client, server))
                for sock in (client, server):
                    sock.close()
                return


@pytest.fixture
def proxy(database_dsn: str) -> Iterator[Proxy]:
    params = conninfo_to_dict(database_dsn)
    p = Proxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    try:
        yield p
    finally:
        p.close()


def tight(**overrides: Any) -> Settings:
    """Short bounds, so a test sees them end (docs/settings.md)."""
    values: dict[str, Any] = {
        "pool_min_size": 1,
        "pool_max_size": 2,
        "connect_timeout": 1.0,
        "acquire_timeout": 1.0,
        "statement_timeout": 1.0,
        "network_timeout": 2.0,
        "retry_timeout": 4.0,
        "notify_channel": "",
        "application_name": "utcp-bounded-waits",
    }
    values.update(overrides)
    return Settings(**values)


def rows_with_ids(dsn: str, ids: tuple[uuid.UUID, ...]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM utcp.stored_events WHERE event_id = ANY(%s)", (list(ids),)
        ).fetchone()
    assert row is not None
    return int(row[0])


def stream_rows(dsn: str, stream: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM utcp.stored_events WHERE stream_id = %s", (stream,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def events(n: int) -> list[NewEvent]:
    return [NewEvent("Tick", {"n": i}) for i in range(n)]


# -- a silent network ------------------------------------------------------------


def test_a_silent_network_ends_every_call_within_its_bound(
    proxy: Proxy, writer_dsn: str, database_dsn: str, stream: str
) -> None:
    settings = tight()
    with EventStore.open(proxy.dsn(writer_dsn), settings) as store:
        store.append(stream, events(1))  # the pool's connection works
        proxy.silent()
        bound = settings.retry_timeout + MARGIN

        started = time.monotonic()
        with pytest.raises(AppendOutcomeUnknown) as info:
            store.append(stream, events(2))
        assert time.monotonic() - started < bound
        err = info.value
        assert not isinstance(err, StorageUnavailable)  # never to be retried blindly
        assert err.stream_id == stream and len(err.event_ids) == 2
        assert "event ids" in err.message.lower() and "read_stream" in err.message
        # Nothing went through the silent proxy: unknown to the store, not written.
        assert rows_with_ids(database_dsn, err.event_ids) == 0

        for name, call in (
            ("read_stream", lambda: store.read_stream(stream)),
            ("read_all", lambda: store.read_all(limit=10)),
            ("stream_version", lambda: store.stream_version(stream)),
        ):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as unavailable:
                call()
            assert time.monotonic() - started < bound, name
            assert unavailable.value.operation == name
    assert stream_rows(database_dsn, stream) == 1


# -- a reply lost after the commit -----------------------------------------------


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_a_lost_reply_without_a_connection_afterwards_is_outcome_unknown(
    proxy: Proxy, writer_dsn: str, database_dsn: str, stream: str, keyed: bool
) -> None:
    settings = tight(retry_timeout=3.0)
    key = f"k-{stream}" if keyed else None
    batch = events(3)
    with EventStore.open(proxy.dsn(writer_dsn), settings) as store:
        store.stream_version(stream)  # the pool's connection is up
        proxy.cut_next_reply(refuse_for=settings.retry_timeout + 3 * MARGIN)
        started = time.monotonic()
        with pytest.raises(AppendOutcomeUnknown) as info:
            store.append(stream, batch, idempotency_key=key)
        elapsed = time.monotonic() - started
    assert proxy.cuts == 1
    assert elapsed < settings.retry_timeout + MARGIN
    err = info.value
    assert isinstance(err, StorageError) and not isinstance(err, StorageUnavailable)
    assert err.operation == "append" and err.stream_id == stream
    assert err.idempotency_key == key and len(err.event_ids) == 3
    assert isinstance(err.__cause__, StorageUnavailable)
    # The statement did commit: the events are in the log, once.
    assert rows_with_ids(database_dsn, err.event_ids) == 3
    assert stream_rows(database_dsn, stream) == 3
    if keyed:
        assert "same idempotency key" in err.message
        # Repeating with the key (what the message says) never writes again.
        with EventStore.open(writer_dsn, tight()) as direct:
            again = direct.append(stream, batch, idempotency_key=key)
        assert again.duplicate is True
        assert again.first_version == 1 and again.last_version == 3
        assert stream_rows(database_dsn, stream) == 3
    else:
        assert "read_stream" in err.message and "twice" in err.message
        with EventStore.open(writer_dsn, tight()) as direct:
            stored = direct.read_stream(stream)
        assert tuple(e.event_id for e in stored) == err.event_ids


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_a_lost_reply_with_a_connection_afterwards_is_the_write_once(
    proxy: Proxy, writer_dsn: str, database_dsn: str, stream: str, keyed: bool
) -> None:
    """The own-write detection still answers when it can run."""
    key = f"k-{stream}" if keyed else None
    with EventStore.open(proxy.dsn(writer_dsn), tight(retry_timeout=10.0)) as store:
        store.stream_version(stream)
        proxy.cut_next_reply(refuse_for=0.0)
        result = store.append(stream, events(2), idempotency_key=key)
    assert proxy.cuts == 1
    assert result.duplicate is False
    assert (result.first_version, result.last_version) == (1, 2)
    assert stream_rows(database_dsn, stream) == 2


def test_the_retry_budget_bounds_the_whole_call(proxy: Proxy, writer_dsn: str, stream: str) -> None:
    """An outage longer than retry_timeout: the call ends within it (each
    attempt's waits are capped by what is left of the budget), and an append
    that never reached the server is plainly StorageUnavailable."""
    # No connection kept: none is open when the outage starts (one that was
    # would be cut under a statement, whose outcome the store cannot know).
    settings = tight(retry_timeout=3.0, acquire_timeout=10.0, retry_attempts=1000, pool_min_size=0)
    with EventStore.open(proxy.dsn(writer_dsn), settings) as store:
        proxy.refuse()
        for call in (
            lambda: store.append(stream, events(1)),
            lambda: store.read_all(limit=1),
        ):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as info:
                call()
            assert time.monotonic() - started < settings.retry_timeout + MARGIN
            assert not isinstance(info.value, AppendOutcomeUnknown)


class _GoesSilent:
    """A projection whose batch meets a network gone silent mid-transaction."""

    name = "goes-silent"

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def apply(self, conn: psycopg.Connection[Any], events: Any, tables: Any) -> None:
        self.proxy.silent()
        conn.execute("SELECT 1")


def test_a_silent_network_ends_the_projection_workers_batch_within_its_bound(
    proxy: Proxy, database_dsn: str, store: EventStore, stream: str
) -> None:
    store.append(stream, events(1))  # something to apply
    settings = tight()
    through = proxy.dsn(database_dsn)
    with EventStore.open(through, settings) as proxied:
        name = f"silent-{uuid.uuid4().hex[:8]}"
        runner = ProjectionRunner(proxied, through, _GoesSilent(proxy), checkpoint_name=name)  # type: ignore[arg-type]
        with runner:
            assert runner.acquire()
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                runner.catch_up()
            assert time.monotonic() - started < settings.round_trip_timeout + MARGIN
            assert runner.connection.closed  # abandoned: the worker reconnects
            # A new worker session meets the silence too: bounded by
            # connect_timeout (psycopg's ConnectionTimeout), then the watchdog.
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                runner2 = ProjectionRunner(proxied, through, checkpoint_name="silent-other")
                runner2.acquire()
            assert time.monotonic() - started < settings.round_trip_timeout + MARGIN


# -- a frozen projection worker ------------------------------------------------------

FREEZING_WORKER = """
import os, signal, sys, threading
from eventstore import EventStore
from projections.runner import ProjectionRunner
from tests.support.database import WAIT, wait_until
from tests.support.horizon import wait_for_horizon
from tests.support.threads import line_queue

class Freezing:
    name = "freezing"

    def apply(self, conn, events, tables):
        conn.execute("SELECT pg_current_xact_id()")  # holds a transaction id
        print("frozen", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # a paused VM, a debugger

dsn, name = sys.argv[1], sys.argv[2]
with EventStore.open(dsn) as store:
    runner = ProjectionRunner(store, dsn, Freezing(), checkpoint_name=name, channel="")
    runner.run(threading.Event())
"""


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_frozen_worker_cannot_hold_the_readers_back_for_long(
    database_dsn: str, store: EventStore, stream: str
) -> None:
    name = f"freeze-{uuid.uuid4().hex[:8]}"
    idle_timeout = 1.0
    before = store.append(stream, events(1))
    env = {
        **os.environ,
        "EVENTSTORE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(idle_timeout),
        "EVENTSTORE_POOL_MIN_SIZE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", FREEZING_WORKER, database_dsn, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = line_queue(proc.stdout)
        try:
            assert lines.get(timeout=WAIT).strip() == "frozen"
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"the worker never froze: {proc.communicate()[1]}") from None
        wait_until(lambda: _process_state(proc.pid) == "T", "the worker to be stopped")

        # Appended while the frozen worker's transaction holds the horizon.
        after = store.append(stream, events(1), expected_version=1)
        assert after.first_version == 2
        (first,) = store.read_stream(stream, limit=1)
        assert first.position == before.positions[0]

        def visible() -> bool:
            page = store.read_all(after=first.checkpoint, limit=100_000)
            return any(e.stream_id == stream and e.stream_version == 2 for e in page)

        # The server ends the worker's session after idle_timeout: the
        # horizon moves. (Other sessions on the shared server can delay it:
        # a generous bound, naming whoever holds it.)
        wait_for_horizon(database_dsn)
        assert visible(), "the horizon moved past the frozen worker, the event stayed hidden"
        with psycopg.connect(database_dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"eventstore-projection-{name}",),
            ).fetchone()
        assert rows is not None and rows[0] == 0, "the frozen session must be gone"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT)


# -- tail --follow through an outage ---------------------------------------------------


def _append_direct(dsn: str, stream: str, type_: str, n: int) -> str:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
        store.append(stream, [NewEvent(type_, {"n": n})])
        (event,) = store.read_stream(stream, from_version=n)
    return str(event.event_id)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_tail_follow_survives_an_outage_and_says_where_to_resume(
    proxy: Proxy, database_dsn: str, stream: str, as_json: bool
) -> None:
    type_ = f"Probe{uuid.uuid4().hex[:8]}"
    first = _append_direct(database_dsn, stream, type_, 1)
    env = {
        **os.environ,
        "EVENTSTORE_RETRY_TIMEOUT": "1",
        "EVENTSTORE_ACQUIRE_TIMEOUT": "0.5",
        "EVENTSTORE_CONNECT_TIMEOUT": "1",
        "EVENTSTORE_NETWORK_TIMEOUT": "2",
    }
    args = ["--types", type_, "--poll-interval", "0.05", *(["--json"] if as_json else [])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "storectl", "tail", "--follow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "EVENTSTORE_DSN": proxy.dsn(database_dsn)},
    )
    out: queue.Queue[str] = queue.Queue()
    err: list[str] = []

    def pump_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)

    def pump_err() -> None:
        assert proc.stderr is not None
        err.extend(proc.stderr)

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_out, pump_err)]
    for thread in threads:
        thread.start()
    seen: list[str] = []

    def event_id(line: str) -> str | None:
        if as_json:
            return str(json.loads(line)["event_id"])
        return None

    def take(n: int) -> None:
        for _ in range(n):
            seen.append(out.get(timeout=WAIT))

    try:
        take(1)
        proxy.refuse()  # the outage
        wait_until(lambda: any("trying again" in line for line in err), "tail to notice")
        second = _append_direct(database_dsn, stream, type_, 2)
        third = _append_direct(database_dsn, stream, type_, 3)
        proxy.forward()  # the outage ends
        take(2)
        fourth = _append_direct(database_dsn, stream, type_, 4)
        take(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert out.empty(), "every event exactly once"
    ids = [first, second, third, fourth]
    if as_json:
        assert [event_id(line) for line in seen] == ids
    else:
        assert [f"{stream} v{n}  {type_}" in line for n, line in enumerate(seen, 1)] == [True] * 4
    with EventStore.open(database_dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
        (last,) = store.read_stream(stream, from_version=4)
    assert "Traceback" not in "".join(err)
    final = err[-1]
    if as_json:
        assert json.loads(final) == {"resume_after": last.checkpoint}
    else:
        assert final.strip() == (
            f"-- checkpoint {last.checkpoint} (continue with --after {last.checkpoint})"
        )


def test_tail_follow_that_fails_still_says_where_to_resume(database_dsn: str) -> None:
    """An error that is not an outage (here: a checkpoint not in the log)
    ends the tail with one error line, after the resume line."""
    checkpoint = f"{2**40}/{2**40}"
    proc = subprocess.run(
        [sys.executable, "-m", "storectl", "tail", "--follow", "--json", "--after", checkpoint],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={**os.environ, "EVENTSTORE_DSN": database_dsn},
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert json.loads(lines[0]) == {"resume_after": checkpoint}
    assert lines[1].startswith("eventstore: error: checkpoint")
    assert len(lines) == 2
