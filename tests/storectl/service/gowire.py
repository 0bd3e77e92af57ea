"""A byte-exact replica of the trading assistant's Go HTTP transport
(``libs/utcp``: ``UTCPClient.callHTTP``), for tests.

What it sends, as Go's ``net/http`` writes it: ``POST`` to the provider's
endpoint URL, with exactly the headers ``Host``, ``User-Agent:
Go-http-client/1.1``, ``Content-Length``, ``Content-Type: application/json``
and ``Accept-Encoding: gzip``, in that order, no auth header; the body
``{"tool":…,"input":…}`` as ``encoding/json.Marshal`` writes it: compact,
struct fields in declaration order (``omitempty`` ones left out when
empty), map keys sorted, ``<`` ``>`` ``&`` U+2028 U+2029 escaped as
``\\u003c``…, control characters as ``\\n``/``\\u001f``…, floats in Go's
shortest form (``100``, ``1e+21``, ``1e-7``), ``time.Time`` in RFC 3339
with up to nine fraction digits (zero time ``0001-01-01T00:00:00Z``, never
omitted), nil slices and maps as ``null``.

What it does with the reply, as Go does: reads at most 1 MiB; a non-2xx
status is an error whose text is the body, trimmed; a 2xx body is
``{"output": …}`` (or the raw output).

The Go structs (``libs/utcp/storage_types.go``) are the dataclasses below,
their fields in Go's order with Go's JSON names and ``omitempty`` flags.
"""

from __future__ import annotations

import dataclasses
import http.client
import math
import re
import socket
from decimal import Decimal
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

__all__ = [
    "ZERO_TIME",
    "GetTradeInput",
    "GoReply",
    "GoTime",
    "ListTradesInput",
    "SaveEventInput",
    "SaveTradeInput",
    "StoredEvent",
    "StoredRisk",
    "StoredTrade",
    "go_marshal",
    "go_request",
    "send",
]

MAX_REPLY: Final = 1 << 20
#: What Go's time.Time.UnmarshalJSON accepts (RFC 3339: a T and a zone).
RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


@dataclasses.dataclass(frozen=True)
class GoTime:
    """A ``time.Time``: wall time with nanoseconds and a zone offset."""

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    nanosecond: int = 0
    offset_minutes: int = 0

    def rfc3339nano(self) -> str:
        """``time.RFC3339Nano``: fraction without trailing zeros, ``Z`` for UTC."""
        text = (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
            f"T{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )
        if self.nanosecond:
            text += "." + f"{self.nanosecond:09d}".rstrip("0")
        if self.offset_minutes == 0:
            return text + "Z"
        sign = "+" if self.offset_minutes > 0 else "-"
        hours, minutes = divmod(abs(self.offset_minutes), 60)
        return f"{text}{sign}{hours:02d}:{minutes:02d}"


ZERO_TIME: Final = GoTime(1, 1, 1)


#: A Go struct field's JSON name and omitempty flag, by attribute (the
#: dataclasses' fields are in the Go structs' order).
Tags = dict[str, tuple[str, bool]]


@dataclasses.dataclass
class StoredEvent:
    TAGS: ClassVar[Tags] = {
        "id": ("id", False),
        "symbol": ("symbol", False),
        "type": ("type", False),
        "time": ("time", False),
        "payload": ("payload", False),
    }
    id: str
    symbol: str
    type: str
    time: GoTime
    payload: dict[str, Any] | None = None


@dataclasses.dataclass
class StoredRisk:
    TAGS: ClassVar[Tags] = {
        "position_size": ("positionSize", False),
        "risk_per_unit": ("riskPerUnit", True),
        "total_risk": ("totalRisk", False),
        "r_multiple": ("rMultiple", True),
    }
    position_size: int
    risk_per_unit: float = 0.0
    total_risk: float = 0.0
    r_multiple: float = 0.0


@dataclasses.dataclass
class StoredTrade:
    TAGS: ClassVar[Tags] = {
        "id": ("id", False),
        "symbol": ("symbol", False),
        "direction": ("direction", False),
        "entry": ("entry", False),
        "stop": ("stop", False),
        "targets": ("targets", False),
        "event_id": ("eventId", True),
        "strategy_id": ("strategyId", False),
        "notes": ("notes", True),
        # omitempty has no effect on a struct (Go's encoding/json v1): always sent
        "created_at": ("createdAt", True),
    }
    id: str
    symbol: str
    direction: str
    entry: float
    stop: float
    targets: list[float] | None = None
    event_id: str = ""
    strategy_id: str = ""
    notes: str = ""
    created_at: GoTime = ZERO_TIME


@dataclasses.dataclass
class SaveEventInput:
    TAGS: ClassVar[Tags] = {"event": ("event", False)}
    event: StoredEvent


@dataclasses.dataclass
class SaveTradeInput:
    TAGS: ClassVar[Tags] = {
        "trade": ("trade", False),
        "risk": ("risk", True),
        "event": ("event", True),
    }
    trade: StoredTrade
    risk: StoredRisk | None = None
    event: StoredEvent | None = None


@dataclasses.dataclass
class GetTradeInput:
    TAGS: ClassVar[Tags] = {"id": ("id", False)}
    id: str


@dataclasses.dataclass
class ListTradesInput:
    TAGS: ClassVar[Tags] = {
        "symbol": ("symbol", True),
        "strategy_id": ("strategyId", True),
        "limit": ("limit", True),
    }
    symbol: str = ""
    strategy_id: str = ""
    limit: int = 0


@dataclasses.dataclass
class _ToolRequest:
    TAGS: ClassVar[Tags] = {"tool": ("tool", False), "input": ("input", False)}
    tool: str
    input: Any


# -- encoding/json.Marshal ---------------------------------------------------------

_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _go_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch < " " or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_float(value: float) -> str:
    """``encoding/json``'s float64: shortest digits, 'f' form unless
    |x| < 1e-6 or |x| >= 1e21, then 'e' form with e-07 cleaned to e-7."""
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value}")
    shortest = Decimal(repr(value)).normalize()
    magnitude = abs(value)
    if magnitude == 0 or 1e-6 <= magnitude < 1e21:
        return format(shortest, "f")
    sign, digits, exponent = shortest.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    power = exponent + len(text) - 1
    formatted = f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if formatted[-4:-1] == "e-0":
        formatted = formatted[:-2] + formatted[-1]
    return formatted


def _empty(value: Any) -> bool:
    """Go's isEmptyValue (for omitempty); structs (GoTime) are never empty."""
    if isinstance(value, GoTime) or dataclasses.is_dataclass(value):
        return False
    return value is None or value is False or value in (0, "", [], {})


def go_marshal(value: Any) -> str:
    """``json.Marshal(value)`` as Go writes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, GoTime):
        return '"' + value.rfc3339nano() + '"'
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = []
        tags: dict[str, tuple[str, bool]] = value.TAGS  # type: ignore[attr-defined]
        for field in dataclasses.fields(value):
            name, omitempty = tags[field.name]
            item = getattr(value, field.name)
            if omitempty and _empty(item):
                continue
            parts.append(_go_string(name) + ":" + go_marshal(item))
        return "{" + ",".join(parts) + "}"
    if isinstance(value, dict):  # a Go map: keys sorted
        items = sorted(value.items())
        return "{" + ",".join(_go_string(k) + ":" + go_marshal(v) for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_marshal(v) for v in value) + "]"
    raise TypeError(f"no Go encoding for {type(value).__name__}")


# -- net/http ------------------------------------------------------------------------


def go_request(endpoint: str, tool: str, tool_input: Any) -> bytes:
    """The bytes Go's client writes for ``CallTool(ctx, "storage", tool, input, &out)``."""
    url = urlsplit(endpoint)
    body = go_marshal(_ToolRequest(tool, tool_input)).encode()
    path = url.path + ("?" + url.query if url.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        "User-Agent: Go-http-client/1.1\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Content-Type: application/json\r\n"
        "Accept-Encoding: gzip\r\n"
        "\r\n"
    )
    return head.encode() + body


@dataclasses.dataclass
class GoReply:
    status: int
    headers: dict[str, str]
    #: The whole body (the test checks it stays within Go's 1 MiB read).
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """The error text Go's client returns (its message part): the body, trimmed."""
        assert not self.ok, f"status {self.status}"
        return self.body[:MAX_REPLY].decode().strip()


def send(endpoint: str, tool: str, tool_input: Any, *, timeout: float = 30.0) -> GoReply:
    """One call, on its own connection, the request written as Go writes it."""
    url = urlsplit(endpoint)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(go_request(endpoint, tool, tool_input))
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return GoReply(response.status, headers, body)
