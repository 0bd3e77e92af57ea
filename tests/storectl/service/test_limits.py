"""Bounded waits and shutdown: the per-call time limit (504), the wait for a
database connection (503 + Retry-After), SIGTERM with a call in flight, and
concurrent saves of one setup and one event."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from storectl.service import ServiceSettings, build_app
from storectl.service.server import running
from tests.support.database import pooled_connection

BODY = b'{"tool":"storage.get_trade","input":{"id":"x"}}'


@contextmanager
def keys_locked(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """utcp.api_keys locked by a superuser's open transaction: every key
    lookup waits until the block ends."""
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE utcp.api_keys IN ACCESS EXCLUSIVE MODE")
        yield conn
        conn.rollback()


def wait_for_lock_waiter(dsn: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise AssertionError("no call waited for the lock")


def test_a_call_past_the_time_limit_answers_504(
    service_db: str, service_dsn: str, keys: dict[str, str]
) -> None:
    settings = ServiceSettings(dsn=service_dsn, key_cache_seconds=0, request_timeout=1.0)
    with running(build_app(settings), settings) as url, httpx.Client(base_url=url) as client:
        with keys_locked(service_db):
            response = client.post(f"/k/{keys['reader']}/tools", content=BODY, timeout=30)
        assert response.status_code == 504
        assert "Repeating the same call is safe" in response.text
        # the service is still fine afterwards
        after = client.post(f"/k/{keys['reader']}/tools", content=BODY, timeout=30)
        assert after.status_code == 404


def test_no_connection_within_the_wait_answers_503(service_dsn: str) -> None:
    settings = ServiceSettings(
        dsn=service_dsn, no_auth=True, pool_size=1, db_wait=0.3, request_timeout=5.0
    )
    app = build_app(settings)
    with running(app, settings) as url, httpx.Client(base_url=url) as client:
        store = app.state.service.context().store
        with pooled_connection(store):  # the pool's only connection, held
            response = client.post("/tools", content=BODY, timeout=30)
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(settings.retry_after)
        assert client.post("/tools", content=BODY, timeout=30).status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_sigterm_lets_the_call_in_flight_finish(
    service_db: str, service_dsn: str, keys: dict[str, str]
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storectl",
            "serve",
            "--port",
            str(port),
            "--dsn",
            service_dsn,
            "--key-cache-seconds",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.05)
            result: list[httpx.Response] = []
            with keys_locked(service_db):
                caller = threading.Thread(
                    target=lambda: result.append(
                        client.post(f"/k/{keys['reader']}/tools", content=BODY)
                    )
                )
                caller.start()
                wait_for_lock_waiter(service_db)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)  # the server is shutting down, the call still waits
            caller.join(timeout=30)
        assert result and result[0].status_code == 404  # answered, not cut off
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
    assert keys["reader"] not in log
    assert '"tool":"storage.get_trade"' in log


def test_concurrent_saves(http: httpx.Client, keys: dict[str, str]) -> None:
    key = keys["writer"]
    tid = f"race-{uuid.uuid4().hex[:8]}"
    eid = f"race-ev-{uuid.uuid4().hex[:8]}"

    def save_trade(i: int) -> int:
        trade = {
            "id": tid,
            "symbol": "RACE",
            "direction": "long",
            "entry": 100.0 + i,
            "stop": 90.0,
            "targets": None,
            "strategyId": "s",
            "createdAt": "0001-01-01T00:00:00Z",
        }
        body = {"tool": "storage.save_trade", "input": {"trade": trade}}
        return http.post(f"/k/{key}/tools", json=body).status_code

    def save_event(_: int) -> int:
        event = {
            "id": eid,
            "symbol": "RACE",
            "type": "t",
            "time": "2026-01-01T00:00:00Z",
            "payload": None,
        }
        body = {"tool": "storage.save_event", "input": {"event": event}}
        return http.post(f"/k/{key}/tools", json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        trades = list(pool.map(save_trade, range(16)))
        events = list(pool.map(save_event, range(16)))
    assert trades == [200] * 16 and events == [200] * 16
    revisions = http.post(
        f"/k/{key}/tools",
        json={"tool": "storage.list_trade_revisions", "input": {"id": tid}},
    ).json()["output"]["revisions"]
    assert sorted(r["trade"]["entry"] for r in revisions) == [100.0 + i for i in range(16)]
    assert [r["revision"] for r in revisions] == list(range(1, 17))
    assert len({r["trade"]["createdAt"] for r in revisions}) == 1
    read = http.post(
        f"/k/{key}/tools",
        json={"tool": "store.read_stream", "input": {"stream": "assistant-RACE", "limit": 1000}},
    ).json()["output"]["events"]
    assert sum(1 for e in read if e["data"]["id"] == eid) == 1


def test_a_trickled_body_is_cut_off_at_the_time_limit(service_dsn: str) -> None:
    settings = ServiceSettings(dsn=service_dsn, no_auth=True, request_timeout=1.0)
    with running(build_app(settings), settings) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /tools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n" + BODY[:10]
            )
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
