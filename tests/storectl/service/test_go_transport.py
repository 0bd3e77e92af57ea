"""The assistant's four storage tools through a byte-exact replica of its Go
HTTP transport (tests/storectl/service/gowire.py): requests written as
Go's net/http and encoding/json write them, replies read as its client
reads them. Each behaviour of the storage provider, concurrent clients,
and a client cut off mid-call that retries."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest

from .gowire import (
    MAX_REPLY,
    RFC3339,
    ZERO_TIME,
    GetTradeInput,
    GoReply,
    GoTime,
    ListTradesInput,
    SaveEventInput,
    SaveTradeInput,
    StoredEvent,
    StoredRisk,
    StoredTrade,
    go_marshal,
    go_request,
    send,
)

SIGNAL_TIME = GoTime(2026, 12, 1, 10, 30, 5, 123456789, offset_minutes=120)


# -- what the Go client decodes ----------------------------------------------------


class GoRisk(msgspec.Struct):
    positionSize: int  # an integer literal, or Go's decoder fails
    totalRisk: float
    riskPerUnit: float = 0.0
    rMultiple: float = 0.0


class GoTrade(msgspec.Struct):
    id: str
    symbol: str
    direction: str
    entry: float
    stop: float
    targets: list[float] | None
    strategyId: str
    createdAt: str
    eventId: str = ""
    notes: str = ""


class GoEvent(msgspec.Struct):
    id: str
    symbol: str
    type: str
    time: str
    payload: dict[str, Any] | None


class GoTradeOutput(msgspec.Struct):
    trade: GoTrade
    risk: GoRisk | None = None
    event: GoEvent | None = None


class GoListOutput(msgspec.Struct):
    trades: list[GoTradeOutput]


def times_in(node: Any) -> Iterator[str]:
    if isinstance(node, GoTradeOutput):
        yield node.trade.createdAt
        if node.event is not None:
            yield node.event.time
    elif isinstance(node, GoListOutput):
        for item in node.trades:
            yield from times_in(item)


def output(reply: GoReply, kind: type[Any]) -> Any:
    """The Go client's success path: ≤ 1 MiB, ``{"output": …}`` decoded into
    its structs; every time as time.Time.UnmarshalJSON needs it."""
    assert reply.ok, (reply.status, reply.body)
    assert len(reply.body) <= MAX_REPLY
    assert reply.headers["content-type"].startswith("application/json")
    raw = msgspec.json.decode(reply.body, type=dict[str, msgspec.Raw])
    assert set(raw) == {"output"}
    decoded = msgspec.json.decode(raw["output"], type=kind)
    for text in times_in(decoded):
        assert RFC3339.fullmatch(text), text
    for literal in re.findall(rb'"positionSize":([^,}]*)', reply.body):
        assert re.fullmatch(rb"-?\d+", literal), literal
    return decoded


def error(reply: GoReply, status: int) -> str:
    """The Go client's failure path: the status, and one plain-text line."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.error
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def endpoint(base_url: str, keys: dict[str, str]) -> str:
    """The providers.json endpoint of a writer: the key in the URL, no header."""
    return f"{base_url}/k/{keys['writer']}/tools"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def signal(symbol: str, **payload: Any) -> StoredEvent:
    return StoredEvent(
        id=uid("sig"),
        symbol=symbol,
        type="signal.generated",
        time=SIGNAL_TIME,
        payload=payload or {"score": 0.75, "why": "<breakout> & volume", "bars": [1, 2.5]},
    )


def setup(symbol: str, **changes: Any) -> StoredTrade:
    trade = StoredTrade(
        id=uid("setup"),
        symbol=symbol,
        direction="long",
        entry=190.5,
        stop=185.0,
        targets=[200.0, 210.25],
        strategy_id="breakout",
    )
    for name, value in changes.items():
        setattr(trade, name, value)
    return trade


def stream_count(base_url: str, key: str, stream: str, event_id: str | None = None) -> int:
    reply = send(
        f"{base_url}/k/{key}/tools", "store.read_stream", {"limit": 1000, "stream": stream}
    )
    assert reply.ok, reply.body
    events = msgspec.json.decode(reply.body)["output"]["events"]
    return sum(1 for e in events if event_id is None or e["data"]["id"] == event_id)


# -- the wire itself ------------------------------------------------------------------


def test_the_request_is_written_as_go_writes_it() -> None:
    event = StoredEvent("e<1>", "AAPL", "signal", SIGNAL_TIME, {"z": 1, "a": "x&y", "m": None})
    sent = go_request(
        "http://127.0.0.1:8080/k/KEY/tools",
        "storage.save_trade",
        SaveTradeInput(setup("AAPL", id="s1", targets=None, entry=100.0), event=event),
    )
    head, body = sent.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /k/KEY/tools HTTP/1.1",
        b"Host: 127.0.0.1:8080",
        b"User-Agent: Go-http-client/1.1",
        b"Content-Length: " + str(len(body)).encode(),
        b"Content-Type: application/json",
        b"Accept-Encoding: gzip",
    ]
    assert body == (
        b'{"tool":"storage.save_trade","input":{"trade":{"id":"s1","symbol":"AAPL",'
        b'"direction":"long","entry":100,"stop":185,"targets":null,"strategyId":"breakout",'
        b'"createdAt":"0001-01-01T00:00:00Z"},"event":{"id":"e\\u003c1\\u003e",'
        b'"symbol":"AAPL","type":"signal","time":"2026-12-01T10:30:05.123456789+02:00",'
        b'"payload":{"a":"x\\u0026y","m":null,"z":1}}}}'
    )
    assert go_marshal(ListTradesInput()) == "{}"
    assert go_marshal([1e21, 1e-7, 0.1, -0.0, 12.0]) == "[1e+21,1e-7,0.1,-0,12]"
    assert go_marshal("\u2028\t\x01") == '"\\u2028\\t\\u0001"'


# -- storage.save_event ---------------------------------------------------------------


def test_save_event_identical_replay_and_a_conflicting_id(
    endpoint: str, base_url: str, keys: dict[str, str]
) -> None:
    symbol = uid("GS")
    event = signal(symbol)
    first = send(endpoint, "storage.save_event", SaveEventInput(event))
    assert first.body == b'{"output":{}}'  # never an empty body, also for saves
    replay = send(endpoint, "storage.save_event", SaveEventInput(event))
    assert replay.status == 200 and replay.body == b'{"output":{}}'
    assert stream_count(base_url, keys["reader"], f"assistant-{symbol}") == 1

    other = StoredEvent(event.id, symbol, event.type, event.time, {"score": 0.1})
    text = error(send(endpoint, "storage.save_event", SaveEventInput(other)), 409)
    assert text.startswith("storage.save_event:") and repr(event.id) in text
    assert stream_count(base_url, keys["reader"], f"assistant-{symbol}") == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": " "}, "event.id"),
        ({"symbol": ""}, "event.symbol"),
        ({"type": ""}, "event.type"),
        ({"time": ZERO_TIME}, "event.time"),
    ],
)
def test_save_event_blank_fields_are_400(endpoint: str, change: dict[str, Any], field: str) -> None:
    event = signal("AAPL")
    for name, value in change.items():
        setattr(event, name, value)
    text = error(send(endpoint, "storage.save_event", SaveEventInput(event)), 400)
    assert text == f"storage.save_event: {field} is required"


# -- storage.save_trade / get_trade ---------------------------------------------------------


def test_save_trade_revisions_and_get_trade(endpoint: str, base_url: str) -> None:
    symbol = uid("GT")
    event = signal(symbol)
    trade = setup(symbol, notes="first <plan> & notes")
    risk = StoredRisk(position_size=120, risk_per_unit=5.5, total_risk=660.0, r_multiple=1.75)
    saved = send(endpoint, "storage.save_trade", SaveTradeInput(trade, risk, event))
    assert saved.body == b'{"output":{}}'

    got = output(send(endpoint, "storage.get_trade", GetTradeInput(trade.id)), GoTradeOutput)
    assert got.trade.eventId == event.id  # defaults to the event's id
    assert got.trade.notes == "first <plan> & notes"
    assert got.risk == GoRisk(120, 660.0, 5.5, 1.75)
    assert got.event is not None and got.event.payload == event.payload
    # the zone is kept; nine fraction digits are rounded to six (PostgreSQL's precision)
    assert got.event.time == "2026-12-01T10:30:05.123457+02:00"
    created = got.trade.createdAt
    assert created != ZERO_TIME.rfc3339nano()  # an unset createdAt means now

    # identical: nothing written
    send(endpoint, "storage.save_trade", SaveTradeInput(trade, risk, event))
    revisions = send(endpoint, "storage.list_trade_revisions", GetTradeInput(trade.id))
    assert [r["revision"] for r in msgspec.json.decode(revisions.body)["output"]["revisions"]] == [
        1
    ]

    # changed: a new revision; the first createdAt is kept whatever is sent
    trade.stop = 187.25
    trade.event_id = event.id
    trade.created_at = GoTime(2030, 1, 1)
    resized = StoredRisk(position_size=150, total_risk=487.5)
    assert send(endpoint, "storage.save_trade", SaveTradeInput(trade, resized)).ok
    got = output(send(endpoint, "storage.get_trade", GetTradeInput(trade.id)), GoTradeOutput)
    assert got.trade.stop == 187.25 and got.trade.createdAt == created
    assert got.risk == GoRisk(150, 487.5)
    assert got.event is not None and got.event.id == event.id
    revisions = send(endpoint, "storage.list_trade_revisions", GetTradeInput(trade.id))
    listed = msgspec.json.decode(revisions.body)["output"]["revisions"]
    assert [(r["revision"], r["trade"]["stop"]) for r in listed] == [(1, 185.0), (2, 187.25)]


def test_get_trade_unknown_and_blank_ids(endpoint: str) -> None:
    missing = uid("nope")
    text = error(send(endpoint, "storage.get_trade", GetTradeInput(missing)), 404)
    assert text == f"storage.get_trade: trade '{missing}' not found"
    assert error(send(endpoint, "storage.get_trade", GetTradeInput("")), 400) == (
        "storage.get_trade: id is required"
    )


def test_save_trade_refusals_write_nothing(endpoint: str) -> None:
    symbol = uid("GR")
    blank = setup(symbol, strategy_id="")
    assert error(send(endpoint, "storage.save_trade", SaveTradeInput(blank)), 400) == (
        "storage.save_trade: trade.strategyId is required"
    )
    event = signal(symbol)
    assert send(endpoint, "storage.save_event", SaveEventInput(event)).ok
    clash = StoredEvent(event.id, symbol, event.type, event.time, {"other": True})
    trade = setup(symbol)
    error(send(endpoint, "storage.save_trade", SaveTradeInput(trade, event=clash)), 409)
    error(send(endpoint, "storage.get_trade", GetTradeInput(trade.id)), 404)


# -- storage.list_trades ---------------------------------------------------------------------


def test_list_trades_filters_and_limits(endpoint: str) -> None:
    symbol = uid("GL")
    ids = []
    for month in range(1, 5):
        trade = setup(
            symbol,
            created_at=GoTime(2026, month, 1, 12),
            strategy_id="odd" if month % 2 else "even",
        )
        ids.append(trade.id)
        assert send(endpoint, "storage.save_trade", SaveTradeInput(trade)).ok
    everything = output(
        send(endpoint, "storage.list_trades", ListTradesInput(symbol=symbol)), GoListOutput
    )
    assert [t.trade.id for t in everything.trades] == ids[::-1]  # newest first
    assert everything.trades[0].trade.createdAt == "2026-04-01T12:00:00Z"
    two = output(
        send(endpoint, "storage.list_trades", ListTradesInput(symbol=symbol, limit=2)),
        GoListOutput,
    )
    assert [t.trade.id for t in two.trades] == ids[:1:-1]
    odd = output(
        send(
            endpoint,
            "storage.list_trades",
            ListTradesInput(symbol=symbol, strategy_id="odd"),
        ),
        GoListOutput,
    )
    assert [t.trade.id for t in odd.trades] == [ids[2], ids[0]]
    # Go's zero ListTradesInput is {}: the default limit over every symbol
    default = output(send(endpoint, "storage.list_trades", ListTradesInput()), GoListOutput)
    assert 4 <= len(default.trades) <= 100


def test_list_trades_reply_stays_under_one_mib(endpoint: str) -> None:
    """300 setups as large as the store allows (2000 characters of notes, 32
    targets): the largest limit answers with fewer, and under 1 MiB."""
    symbol = uid("GB")

    def save(i: int) -> int:
        trade = setup(
            symbol,
            notes=f"{i:04d}" + "<&>" * 665,
            targets=[100.0 + i + j / 7 for j in range(32)],
        )
        return send(endpoint, "storage.save_trade", SaveTradeInput(trade)).status

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(save, range(300))) == {200}
    reply = send(endpoint, "storage.list_trades", ListTradesInput(symbol=symbol, limit=100000))
    listed = output(reply, GoListOutput)
    assert 100 < len(listed.trades) < 300
    assert len(reply.body) < MAX_REPLY // 2 + 64 * 1024


# -- the key in the URL, unknown tools -------------------------------------------------------


def test_without_the_key_or_with_an_unknown_tool(base_url: str, endpoint: str) -> None:
    no_key = send(f"{base_url}/tools", "storage.get_trade", GetTradeInput("x"))
    assert error(no_key, 401).startswith("an API key is needed")
    wrong = send(f"{base_url}/k/esk_{'x' * 43}/tools", "storage.get_trade", GetTradeInput("x"))
    assert error(wrong, 401) == "unknown or revoked API key"
    assert error(send(endpoint, "storage.delete_trade", GetTradeInput("x")), 404) == (
        "unknown tool 'storage.delete_trade'"
    )


# -- concurrency and retries ---------------------------------------------------------


def test_sixteen_concurrent_clients_lose_and_double_nothing(
    endpoint: str, base_url: str, keys: dict[str, str]
) -> None:
    """16 threads, each with its own events and setups; every event is also
    sent twice (a retry): each lands exactly once."""
    symbol = uid("GC")
    per_client = 12

    def client(n: int) -> list[str]:
        saved = []
        for i in range(per_client):
            event = signal(symbol, client=n, i=i)
            for _ in range(2):
                assert send(endpoint, "storage.save_event", SaveEventInput(event)).ok
            saved.append(event.id)
            if i % 4 == 0:
                trade = setup(symbol, notes=f"client {n}")
                assert send(endpoint, "storage.save_trade", SaveTradeInput(trade)).ok
        return saved

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = [eid for saved in pool.map(client, range(16)) for eid in saved]
    assert len(set(ids)) == 16 * per_client
    reply = send(
        f"{base_url}/k/{keys['reader']}/tools",
        "store.read_stream",
        {"limit": 1000, "stream": f"assistant-{symbol}"},
    )
    events = msgspec.json.decode(reply.body)["output"]["events"]
    assert sorted(e["data"]["id"] for e in events) == sorted(ids)
    assert [e["version"] for e in events] == list(range(1, len(ids) + 1))
    listed = output(
        send(endpoint, "storage.list_trades", ListTradesInput(symbol=symbol, limit=500)),
        GoListOutput,
    )
    assert len(listed.trades) == 16 * 3


def _cut_off(endpoint: str, request: bytes, keep: int) -> None:
    """Send the first ``keep`` bytes of ``request``, then drop the connection
    without reading a reply (RST: the client is gone)."""
    url = urlsplit(endpoint)
    assert url.hostname is not None and url.port is not None
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(request[:keep])
    sock.close()


@pytest.mark.parametrize("sent", ["whole request", "half the body"])
def test_a_client_cut_off_mid_call_retries_and_it_is_written_once(
    endpoint: str, base_url: str, keys: dict[str, str], sent: str
) -> None:
    symbol = uid("GX")
    event = signal(symbol)
    trade = setup(symbol)
    for tool, payload in (
        ("storage.save_event", SaveEventInput(event)),
        ("storage.save_trade", SaveTradeInput(trade, StoredRisk(10, total_risk=55.0))),
    ):
        request = go_request(endpoint, tool, payload)
        keep = len(request) if sent == "whole request" else len(request) - 40
        _cut_off(endpoint, request, keep)
        # the retry, as the assistant makes it: the same call again
        assert send(endpoint, tool, payload).body == b'{"output":{}}'
        assert send(endpoint, tool, payload).ok
    reader = keys["reader"]
    assert stream_count(base_url, reader, f"assistant-{symbol}", event.id) == 1
    assert stream_count(base_url, reader, f"setup-{trade.id}") == 1
