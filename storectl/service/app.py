"""The service's ASGI application (Starlette, msgspec for every body).

Routes:

* ``POST /tools`` (also ``/k/{key}/tools`` and ``/tools?key=…`` for a client
  that can only be given a URL): the assistant's transport, ``{"tool",
  "input"}`` in, ``{"output": …}`` out, errors as one plain-text line;
* ``POST /tools/{name}``: one tool, as the UTCP manual describes it: the
  input is the body, the raw output comes back, errors as ``{"error": …}``;
* ``GET /utcp`` (the UTCP manual), ``/openapi.json``, ``/healthz`` (alive, no
  key), ``/readyz``, ``/metrics``.

Keys: ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``. The assistant's Go
client sends no header it could be configured with, only its endpoint URL,
so the key may also be part of the URL: ``/k/KEY/tools`` (or ``?key=KEY``).
The trade-off: a key in a URL ends up wherever URLs are written down — the
assistant's providers.json, a reverse proxy's or load balancer's access log,
a shell history. This service never logs it (its access log shows
``/k/***/tools`` and no query string; uvicorn's own access log is off), but
a proxy in front must be configured not to log paths, TLS must carry the
request (plain http only on loopback), and such a key should be a dedicated
writer key for the assistant alone, revoked and replaced if the file leaks.

The store is synchronous: every call into it runs in a worker thread, at
most ``threads`` at once (an anyio CapacityLimiter), under the call's time
limit; the event loop never waits on the database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from eventstore import sql as store_sql
from eventstore.errors import EventStoreError, SchemaNotDeployed, StorageUnavailable, first_line
from eventstore.store import EventStore
from trading.events import trading_registry

from .errors import Answer, answer_for, one_line
from .keys import KeyCache, at_least
from .manual import build_manual, build_openapi
from .metrics import Metrics
from .settings import ServiceSettings
from .tools import TOOLS, Empty, Saved, Tool, ToolContext

__all__ = ["READY_CHANGE", "Service", "build_app"]

log = logging.getLogger("storectl.service")
access_log = logging.getLogger("storectl.service.access")

T = TypeVar("T")

#: The last Sqitch change this code needs (readyz checks its objects).
READY_CHANGE: Final = "setup_indexes"
READY: Final = """
SELECT to_regclass('utcp.api_keys') IS NOT NULL,
       to_regclass('utcp.stored_events_setup_time') IS NOT NULL"""
JSON: Final = "application/json"
#: After a failed open of the store, calls fail at once for this long.
OPEN_RETRY_SECONDS: Final = 1.0
TEXT: Final = "text/plain; charset=utf-8"

_encode = msgspec.json.Encoder().encode


class ToolCall(msgspec.Struct):
    """The assistant's request body."""

    tool: str
    input: msgspec.Raw = msgspec.Raw(b"{}")


class _Refusal(Exception):
    """Refused before any tool ran (size, auth, parsing): status and message."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.answer = Answer(status, message, outcome)


class Service:
    """One running service: settings, the store (opened on first need, so
    the service starts, and says it is not ready, before the database is),
    keys, metrics."""

    def __init__(self, settings: ServiceSettings, store: EventStore | None = None) -> None:
        self.settings = settings
        self._store = store
        self._own_store = store is None
        self._lock = threading.Lock()
        self._context: ToolContext | None = None
        self._failed: tuple[float, EventStoreError] | None = None
        self.keys = KeyCache(settings.key_cache_seconds)
        self.metrics = Metrics(self._gauges)
        self.limiter: anyio.CapacityLimiter | None = None

    # -- the store ---------------------------------------------------------

    def context(self) -> ToolContext:
        """The tools' context, opening the store if needed (raises the
        store's error when it cannot: unavailable, schema missing). One
        thread opens it; the others wait at most ``db_wait``, and for a
        second after a failed open every call fails at once with its error
        (no pile-up of connection attempts while the database is away)."""
        ctx = self._context
        if ctx is not None:
            return ctx
        if not self._lock.acquire(timeout=self.settings.db_wait):
            raise StorageUnavailable(
                "the service is still connecting to the database", operation="serve"
            )
        try:
            if self._context is not None:
                return self._context
            failed = self._failed
            if failed is not None and time.monotonic() - failed[0] < OPEN_RETRY_SECONDS:
                raise failed[1].with_traceback(None)
            if self._store is None:
                try:
                    self._store = EventStore.open(
                        self.settings.dsn,
                        self.settings.store_settings(),
                        registry=trading_registry(),
                    )
                except EventStoreError as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
            self._failed = None
            self._context = ToolContext(
                self._store, keys_dsn=self.settings.keys_dsn, key_cache=self.keys
            )
            return self._context
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._store is not None and self._own_store:
                self._store.close()
                self._store = None
                self._context = None

    def _gauges(self) -> dict[str, float]:
        values: dict[str, float] = {}
        store = self._store
        if store is None:
            return values
        stats = store.pool_stats()
        if stats:
            values["pool_size"] = float(stats.get("pool_size", 0))
            values["pool_available"] = float(stats.get("pool_available", 0))
            values["pool_requests_waiting"] = float(stats.get("requests_waiting", 0))
        with contextlib.suppress(EventStoreError):
            from projections.status import projection_status  # noqa: PLC0415

            status = projection_status(store, "trading")
            values["projection_lag_events"] = float(status.lag_events)
            values["projection_lag_seconds"] = float(status.lag_seconds)
        return values

    async def in_thread(self, func: Callable[[], T]) -> T:
        """``func()`` in a worker thread, within the per-call time limit
        (TimeoutError past it; the thread may still finish its call)."""
        assert self.limiter is not None, "the app's lifespan has not started"
        with anyio.fail_after(self.settings.request_timeout):
            return await anyio.to_thread.run_sync(
                func, limiter=self.limiter, abandon_on_cancel=True
            )


# -- helpers -------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _request_id() -> str:
    return uuid.uuid4().hex[:16]


async def _body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body: at most ``limit`` bytes (413), received within
    ``timeout`` seconds (408: a client that trickles its body holds no
    worker for longer than a call may take)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, f"request body larger than {limit} bytes", "too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Refusal(413, f"request body larger than {limit} bytes", "too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise _Refusal(408, f"request body not received within {timeout:g} s", "timeout") from None
    except ClientDisconnect:
        raise _Refusal(
            400, "the client went away before sending its body", "disconnected"
        ) from None
    return b"".join(chunks)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    header = request.headers.get("x-api-key")
    if header:
        return header.strip()
    path_key = request.path_params.get("key")
    if isinstance(path_key, str) and path_key:
        return path_key
    return request.query_params.get("key") or None


def _redacted_path(request: Request) -> str:
    """The path as logged: a key in it never shows, nor the query string."""
    if "key" in request.path_params:
        return "/k/***/tools"
    return request.url.path


def _base_url(service: Service, request: Request) -> str:
    if service.settings.public_url:
        return service.settings.base_url
    return f"{request.url.scheme}://{request.url.netloc}"


async def _authenticate(service: Service, request: Request) -> tuple[str, str]:
    """(key name, role) of the caller; _Refusal 401 otherwise."""
    if service.settings.no_auth:
        if "origin" in request.headers:
            # A browser's request (they always send Origin on a POST): any web
            # page could otherwise call a keyless service on loopback (a
            # text/plain POST needs no CORS preflight; DNS rebinding makes it
            # same-origin). Programs (the assistant, UTCP clients) send none.
            raise _Refusal(
                403,
                "a service without keys (--no-auth) refuses requests from a web page "
                "(they carry an Origin header)",
                "forbidden",
            )
        return "-", "admin"
    key = _presented_key(request)
    if not key:
        raise _Refusal(
            401,
            "an API key is needed (Authorization: Bearer, X-Api-Key, or /k/KEY/tools)",
            "unauthorized",
        )
    found = await service.in_thread(lambda: service.keys.lookup(service.context().store, key))
    if found is None:
        raise _Refusal(401, "unknown or revoked API key", "unauthorized")
    return found


def _log_access(
    request_id: str,
    request: Request,
    *,
    tool: str | None,
    key: str | None,
    role: str | None,
    status: int,
    started: float,
) -> None:
    access_log.info(
        json.dumps(
            {
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "request_id": request_id,
                "method": request.method,
                "path": _redacted_path(request),
                "tool": tool,
                "key": key,
                "role": role,
                "status": status,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
            separators=(",", ":"),
        )
    )


# -- tool calls ------------------------------------------------------------------------


async def _call(service: Service, request: Request, *, wrapped: bool) -> Response:
    """One tool call: ``wrapped`` is the assistant's transport (``/tools``)."""
    request_id = _request_id()
    started = time.monotonic()
    tool: Tool | None = None
    tool_name: str | None = request.path_params.get("name")
    key_name: str | None = None
    role: str | None = None
    try:
        body = await _body(
            request, service.settings.max_body_bytes, service.settings.request_timeout
        )
        key_name, role = await _authenticate(service, request)
        if wrapped:
            try:
                call = msgspec.json.decode(body, type=ToolCall)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
                why = "JSON nested too deeply" if isinstance(exc, RecursionError) else exc
                raise _Refusal(
                    400,
                    one_line(f'invalid request body (expected {{"tool", "input"}}): {why}'),
                    "validation",
                ) from None
            tool_name, raw = call.tool, bytes(call.input)
        else:
            raw = body
        tool = TOOLS.get(tool_name or "")
        if tool is None:
            raise _Refusal(404, one_line(f"unknown tool {tool_name!r}"), "not_found")
        if not at_least(role, tool.role):
            raise _Refusal(
                403,
                f"{tool.name}: needs {_article(tool.role)} {tool.role} key "
                f"(this key is {_article(role)} {role})",
                "forbidden",
            )
        if raw.strip() in (b"", b"null") and not wrapped:
            raw = b"{}"
        payload = msgspec.json.decode(raw, type=tool.input)
        run = tool.handler
        output = await service.in_thread(lambda: run(service.context(), payload))
    except Exception as exc:  # every failure becomes one answer; none escapes
        name = tool.name if tool is not None else (tool_name or "request")
        answer = exc.answer if isinstance(exc, _Refusal) else answer_for(exc, name, request_id)
        if answer.status >= 500 and answer.outcome == "internal":
            log.error("request %s: %s failed", request_id, name, exc_info=exc)
        elif answer.status >= 500:
            log.warning("request %s: %s: %s", request_id, name, first_line(exc))
        label = tool.name if tool is not None else "-"
        service.metrics.calls.labels(label, answer.outcome).inc()
        service.metrics.latency.labels(label).observe(time.monotonic() - started)
        if answer.status == 409:
            service.metrics.conflicts.inc()
        headers = {"x-request-id": request_id}
        if answer.retry_after:
            headers["retry-after"] = str(service.settings.retry_after)
        if answer.status == 401:
            headers["www-authenticate"] = "Bearer"
        if wrapped:
            response = Response(answer.message + "\n", answer.status, headers, media_type=TEXT)
        else:
            response = Response(
                _encode({"error": answer.message}), answer.status, headers, media_type=JSON
            )
        _log_access(
            request_id,
            request,
            tool=label,
            key=key_name,
            role=role,
            status=answer.status,
            started=started,
        )
        return response
    if isinstance(output, Saved):
        if output.written:
            service.metrics.appends.inc()
        else:
            service.metrics.duplicates.inc()
        output = Empty()
    elif tool.writes:
        if getattr(output, "duplicate", False):
            service.metrics.duplicates.inc()
        else:
            service.metrics.appends.inc()
    service.metrics.calls.labels(tool.name, "ok").inc()
    service.metrics.latency.labels(tool.name).observe(time.monotonic() - started)
    encoded = _encode(output)
    content = b'{"output":' + encoded + b"}" if wrapped else encoded
    _log_access(
        request_id, request, tool=tool.name, key=key_name, role=role, status=200, started=started
    )
    return Response(content, 200, {"x-request-id": request_id}, media_type=JSON)


# -- the other routes ----------------------------------------------------------------


async def _guarded(service: Service, request: Request, make: Callable[[], Any]) -> Response:
    """A GET route that needs a key (any role); JSON errors."""
    request_id = _request_id()
    started = time.monotonic()
    key_name = role = None
    try:
        key_name, role = await _authenticate(service, request)
        response: Response = await make()
    except Exception as exc:
        answer = (
            exc.answer
            if isinstance(exc, _Refusal)
            else answer_for(exc, request.url.path, request_id)
        )
        if answer.outcome == "internal":
            log.error("request %s: %s failed", request_id, request.url.path, exc_info=exc)
        headers = {"x-request-id": request_id}
        if answer.retry_after:
            headers["retry-after"] = str(service.settings.retry_after)
        response = Response(
            _encode({"error": answer.message}), answer.status, headers, media_type=JSON
        )
    _log_access(
        request_id,
        request,
        tool=None,
        key=key_name,
        role=role,
        status=response.status_code,
        started=started,
    )
    return response


def build_app(settings: ServiceSettings, *, store: EventStore | None = None) -> Starlette:
    """The ASGI application for ``settings``. With ``store``, the service uses
    that open store (and leaves it open); otherwise it opens its own from
    ``settings.dsn`` when first needed and closes it at shutdown.
    ``app.state.service`` is the :class:`Service`."""
    service = Service(settings, store)
    auth = not settings.no_auth

    async def tools(request: Request) -> Response:
        return await _call(service, request, wrapped=True)

    async def tool(request: Request) -> Response:
        return await _call(service, request, wrapped=False)

    async def manual(request: Request) -> Response:
        async def make() -> Response:
            return Response(
                _encode(build_manual(_base_url(service, request), auth=auth)), media_type=JSON
            )

        return await _guarded(service, request, make)

    async def openapi(request: Request) -> Response:
        async def make() -> Response:
            return Response(
                _encode(build_openapi(_base_url(service, request), auth=auth)), media_type=JSON
            )

        return await _guarded(service, request, make)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"alive"}', media_type=JSON)

    async def readyz(request: Request) -> Response:
        async def make() -> Response:
            checks = await _readiness(service)
            ready = all(v is True for v in checks.values())
            return Response(
                _encode({"ready": ready, "checks": checks}),
                200 if ready else 503,
                {} if ready else {"retry-after": str(settings.retry_after)},
                media_type=JSON,
            )

        if settings.no_auth:
            return await make()
        # The key lookup needs the database: an unready service answers 503
        # (not 401) when it cannot check keys.
        return await _guarded(service, request, make)

    async def metrics(request: Request) -> Response:
        async def make() -> Response:
            body = await service.in_thread(service.metrics.render)
            return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

        return await _guarded(service, request, make)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.limiter = anyio.CapacityLimiter(settings.threads)
        try:
            await service.in_thread(service.context)
        except EventStoreError as exc:
            log.warning("not ready yet: %s", first_line(exc))
        except TimeoutError:
            log.warning("not ready yet: the database did not answer in time")
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.close)

    async def http_error(request: Request, exc: Exception) -> Response:
        """The router's own 404 and 405: JSON {"error"} under /tools/ (the
        manual's tool routes), one plain-text line elsewhere."""
        assert isinstance(exc, HTTPException)
        what = {404: "no such route", 405: "method not allowed"}.get(
            exc.status_code, one_line(str(exc.detail))
        )
        path = re.sub(r"^/k/[^/]*", "/k/***", request.url.path)  # never echo a key
        message = one_line(f"{request.method} {path}: {what}")
        headers = dict(exc.headers or {})
        if request.url.path.startswith("/tools/"):
            return Response(_encode({"error": message}), exc.status_code, headers, media_type=JSON)
        return Response(message + "\n", exc.status_code, headers, media_type=TEXT)

    app = Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/tools", tools, methods=["POST"]),
            Route("/k/{key}/tools", tools, methods=["POST"]),
            Route("/tools/{name}", tool, methods=["POST"]),
            Route("/utcp", manual, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


async def _readiness(service: Service) -> dict[str, Any]:
    """Database reachable, schema deployed at READY_CHANGE, no restore hazard."""
    checks: dict[str, Any] = {}

    def probe() -> None:
        store = service.context().store
        checks["database"] = True
        row = store.query("readyz", READY, ())[0]
        checks["schema"] = True if all(row) else f"not deployed up to {READY_CHANGE}"
        hazard = store.query("readyz", store_sql.XID_HAZARD, ())[0]
        checks["restore_hazard"] = (
            True if not hazard[2] else "stored transaction ids are ahead of the cluster"
        )

    try:
        await service.in_thread(probe)
    except SchemaNotDeployed as exc:
        checks.setdefault("database", True)
        checks["schema"] = exc.message
    except EventStoreError as exc:
        checks.setdefault("database", first_line(exc))
    except TimeoutError:
        checks.setdefault("database", "no answer within the time limit")
    return checks
