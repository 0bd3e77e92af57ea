"""Running the app: uvicorn in the foreground (``eventstore serve``) or in a
thread on a free loopback port (tests, benchmarks, the demo)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from eventstore.errors import StorageUnavailable

from .settings import ServiceSettings

__all__ = ["running", "uvicorn_config"]


def uvicorn_config(
    app: Any, settings: ServiceSettings, *, port: int | None = None
) -> uvicorn.Config:
    """uvicorn's configuration: TLS when set, no access log of its own (the
    service logs each call as JSON, keys redacted), in-flight calls given
    ``shutdown_grace`` seconds on SIGTERM. uvicorn's access logger is also
    disabled: its lines hold raw paths (``/k/KEY/tools``), and uvicorn writes
    them whenever any handler is attached to that logger (a logging
    configuration of the embedding program, pytest's capture)."""
    logging.getLogger("uvicorn.access").disabled = True
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
        log_config=None,
    )


@contextlib.contextmanager
def running(app: Any, settings: ServiceSettings, *, start_timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` in a background thread on a free port of
    ``settings.host`` (a loopback address); yields its base URL
    (``http://127.0.0.1:PORT``) and stops it (in-flight calls finish) on exit."""
    server = uvicorn.Server(uvicorn_config(app, settings, port=0))
    thread = threading.Thread(target=server.run, name="eventstore-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise StorageUnavailable(
                f"the service did not start within {start_timeout} s", operation="serve"
            )
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if settings.tls_certfile else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=settings.shutdown_grace + 10)
