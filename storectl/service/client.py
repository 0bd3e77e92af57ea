"""A small synchronous client of the service's ``POST /tools`` transport (the
assistant's own: ``{"tool", "input"}`` in, ``{"output": …}`` out, errors as
one line of text), on one kept-alive connection. The demo records through
it; the HTTP benchmark measures it.

    with ToolClient("http://127.0.0.1:8080", key) as client:
        client.call("storage.get_trade", {"id": "s-1"})
"""

from __future__ import annotations

import http.client
import ssl
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import msgspec

from eventstore.errors import EventStoreError, StorageUnavailable

__all__ = ["ToolCallError", "ToolClient"]

#: The assistant's client reads at most this much of a reply.
MAX_REPLY: Final = 1 << 20


class ToolCallError(EventStoreError):
    """A tool call the service answered with a non-2xx status."""

    def __init__(self, message: str, *, status: int, tool: str) -> None:
        super().__init__(message, operation=tool)
        self.status = status


class _Wrapped(msgspec.Struct):
    output: msgspec.Raw


class ToolClient:
    """Calls tools at ``base_url`` (``http[s]://host:port``) with ``key``
    (sent as ``X-Api-Key``; None: no key, for a ``--no-auth`` service)."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        *,
        timeout: float = 60.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path.rstrip("/") + "/tools"
        self._timeout = timeout
        self._tls = tls
        self._headers = {"Content-Type": "application/json"}
        if key is not None:
            self._headers["X-Api-Key"] = key
        self._conn: http.client.HTTPConnection | None = None
        self._encode = msgspec.json.Encoder().encode

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def call_raw(self, tool: str, tool_input: Any) -> bytes:
        """The tool's output as JSON bytes (raises :class:`ToolCallError`)."""
        body = self._encode({"tool": tool, "input": tool_input})
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body, self._headers)
                response = conn.getresponse()
                reply = response.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                # a kept-alive connection the server closed: one fresh try (the
                # call is idempotent: a repeat is recorded at most once)
                self.close()
                if attempt == 2:
                    raise StorageUnavailable(
                        f"{tool}: the service did not answer: {exc}", operation=tool
                    ) from exc
        if len(reply) > MAX_REPLY:
            raise ToolCallError(
                f"{tool}: reply larger than {MAX_REPLY} bytes", status=response.status, tool=tool
            )
        if not 200 <= response.status < 300:
            text = reply.decode(errors="replace").strip() or response.reason
            raise ToolCallError(text, status=response.status, tool=tool)
        return bytes(msgspec.json.decode(reply, type=_Wrapped).output)

    def call(self, tool: str, tool_input: Any, output: Any = Any) -> Any:
        """The tool's output, decoded (as ``output`` when given)."""
        return msgspec.json.decode(self.call_raw(tool, tool_input), type=output)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
