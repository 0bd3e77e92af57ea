"""The service over HTTP on loopback: the assistant's four storage tools as
its Go client calls them (POST /tools, no header, key in the URL), the
store's own tools, the manual, auth, status mapping and limits."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg import sql

from eventstore.errors import ValidationError
from storectl.service import ServiceSettings, build_app
from storectl.service.errors import answer_for
from storectl.service.server import running
from storectl.service.tools import TOOLS
from tests.support.database import admin_dsn, dsn_for
from trading.setups import MAX_PAYLOAD_BYTES, AssistantEvent, check_event

ZERO = "0001-01-01T00:00:00Z"


def go_body(tool: str, payload: dict[str, Any]) -> bytes:
    """A compact body, fields in the order given (as Go's json.Marshal writes a struct)."""
    return msgspec.json.encode({"tool": tool, "input": payload})


def call(http: httpx.Client, key: str, tool: str, payload: dict[str, Any]) -> httpx.Response:
    """The Go transport: POST to the endpoint URL (key in its path), no auth header."""
    return http.post(
        f"/k/{key}/tools",
        content=go_body(tool, payload),
        headers={"Content-Type": "application/json"},
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"output"}
    return body["output"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(event_id: str, symbol: str = "AAPL", **payload: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "symbol": symbol,
        "type": "signal.generated",
        "time": "2026-12-01T10:30:00.123456789Z",
        "payload": payload or {"score": 0.75, "note": "<breakout> & go"},
    }


def trade(trade_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": trade_id,
        "symbol": "AAPL",
        "direction": "long",
        "entry": 190.5,
        "stop": 185.0,
        "targets": [200.0, 210.25],
        "strategyId": "breakout",
        "createdAt": ZERO,
    }
    base.update(changes)
    return base


def stream_events(http: httpx.Client, key: str, stream: str) -> list[dict[str, Any]]:
    out = ok(call(http, key, "store.read_stream", {"stream": stream, "limit": 1000}))
    events: list[dict[str, Any]] = out["events"]
    return events


# -- storage.save_event -----------------------------------------------------------------


def test_save_event_replay_writes_nothing_and_other_content_is_refused(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    w = keys["writer"]
    symbol = uid("SYM")
    ev = event(uid("ev"), symbol)
    assert ok(call(http, w, "storage.save_event", {"event": ev})) == {}
    assert ok(call(http, w, "storage.save_event", {"event": ev})) == {}
    assert len(stream_events(http, w, f"assistant-{symbol}")) == 1

    changed = {**ev, "payload": {"score": 0.5}}
    refused = call(http, w, "storage.save_event", {"event": changed})
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("text/plain")
    line = refused.text.strip()
    assert "\n" not in line and repr(ev["id"]) in line
    assert len(stream_events(http, w, f"assistant-{symbol}")) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", " ", "storage.save_event: event.id is required"),
        ("symbol", "", "storage.save_event: event.symbol is required"),
        ("type", "", "storage.save_event: event.type is required"),
        ("time", ZERO, "storage.save_event: event.time is required"),
    ],
)
def test_save_event_needs_its_fields(
    http: httpx.Client, keys: dict[str, str], field: str, value: str, message: str
) -> None:
    ev = {**event(uid("ev")), field: value}
    response = call(http, keys["writer"], "storage.save_event", {"event": ev})
    assert response.status_code == 400
    assert response.text.strip() == message


def test_malformed_input_names_the_field(http: httpx.Client, keys: dict[str, str]) -> None:
    ev = {**event(uid("ev")), "time": "yesterday"}
    response = call(http, keys["writer"], "storage.save_event", {"event": ev})
    assert response.status_code == 400
    assert "$.event.time" in response.text


# -- storage.save_trade / get_trade / revisions -----------------------------------------


def test_save_trade_revisions_keep_the_first_created_at(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    w = keys["writer"]
    tid = uid("setup")
    ev = event(uid("sig"))
    risk = {"positionSize": 100, "riskPerUnit": 5.5, "totalRisk": 550.0, "rMultiple": 1.7}
    assert (
        ok(call(http, w, "storage.save_trade", {"trade": trade(tid), "risk": risk, "event": ev}))
        == {}
    )

    got = ok(call(http, w, "storage.get_trade", {"id": tid}))
    assert got["trade"]["eventId"] == ev["id"]  # defaults to the event's id
    assert got["trade"]["targets"] == [200.0, 210.25]
    assert got["risk"] == risk
    assert isinstance(got["risk"]["positionSize"], int)
    assert got["event"]["id"] == ev["id"] and got["event"]["payload"] == ev["payload"]
    first_created = got["trade"]["createdAt"]
    assert first_created != ZERO and "T" in first_created and first_created.endswith("Z")

    # identical: nothing written
    call(http, w, "storage.save_trade", {"trade": trade(tid), "risk": risk, "event": ev})
    revs = ok(call(http, w, "storage.list_trade_revisions", {"id": tid}))["revisions"]
    assert [r["revision"] for r in revs] == [1]

    # changed: a second revision, the first createdAt kept even when another is sent
    moved = trade(tid, stop=187.0, createdAt="2030-01-01T00:00:00Z", eventId=ev["id"])
    ok(call(http, w, "storage.save_trade", {"trade": moved, "risk": risk}))
    got = ok(call(http, w, "storage.get_trade", {"id": tid}))
    assert got["trade"]["stop"] == 187.0
    assert got["trade"]["createdAt"] == first_created
    revs = ok(call(http, w, "storage.list_trade_revisions", {"id": tid}))["revisions"]
    assert [(r["revision"], r["trade"]["stop"]) for r in revs] == [(1, 185.0), (2, 187.0)]


def test_save_trade_is_all_or_nothing(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    saved = event(uid("sig"))
    ok(call(http, w, "storage.save_event", {"event": saved}))
    tid = uid("setup")
    # the event conflicts with the one saved: neither the setup nor the event is written
    clash = {**saved, "payload": {"other": True}}
    refused = call(http, w, "storage.save_trade", {"trade": trade(tid), "event": clash})
    assert refused.status_code == 409
    assert call(http, w, "storage.get_trade", {"id": tid}).status_code == 404


def test_save_trade_validation(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    for field, label in (
        ("id", "id"),
        ("symbol", "symbol"),
        ("direction", "direction"),
        ("strategyId", "strategyId"),
    ):
        response = call(http, w, "storage.save_trade", {"trade": trade(uid("s"), **{field: ""})})
        assert response.status_code == 400
        assert response.text.strip() == f"storage.save_trade: trade.{label} is required"
    fractional = call(
        http,
        w,
        "storage.save_trade",
        {"trade": trade(uid("s")), "risk": {"positionSize": 1.5, "totalRisk": 1.0}},
    )
    assert fractional.status_code == 400 and "positionSize" in fractional.text


def test_get_trade_unknown_and_blank(http: httpx.Client, keys: dict[str, str]) -> None:
    r = keys["reader"]
    response = call(http, r, "storage.get_trade", {"id": "x"})
    assert response.status_code == 404
    assert response.text.strip() == "storage.get_trade: trade 'x' not found"
    assert call(http, r, "storage.get_trade", {"id": " "}).status_code == 400


def test_list_trades_newest_first_with_filters(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    symbol = uid("L")
    ids = [uid("lt") for _ in range(4)]
    for i, tid in enumerate(ids):
        created = f"2026-0{i + 1}-01T00:00:00Z"
        strategy = "even" if i % 2 == 0 else "odd"
        ok(
            call(
                http,
                w,
                "storage.save_trade",
                {"trade": trade(tid, symbol=symbol, strategyId=strategy, createdAt=created)},
            )
        )
    # a revision does not move a setup in the list, nor duplicate it
    ok(
        call(
            http,
            w,
            "storage.save_trade",
            {"trade": trade(ids[0], symbol=symbol, strategyId="even", entry=191.0)},
        )
    )
    listed = ok(call(http, w, "storage.list_trades", {"symbol": symbol}))["trades"]
    assert [t["trade"]["id"] for t in listed] == ids[::-1]
    assert listed[-1]["trade"]["entry"] == 191.0
    evens = ok(call(http, w, "storage.list_trades", {"symbol": symbol, "strategyId": "even"}))
    assert [t["trade"]["id"] for t in evens["trades"]] == [ids[2], ids[0]]
    two = ok(call(http, w, "storage.list_trades", {"symbol": symbol, "limit": 2}))
    assert len(two["trades"]) == 2
    none = ok(call(http, w, "storage.list_trades", {"symbol": uid("none")}))
    assert none == {"trades": []}


# -- the store's own tools --------------------------------------------------------------


def test_portfolio_tools_and_positions_as_of(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    pid = uid("p")
    t0 = "2026-12-01T09:00:00Z"
    ok(
        call(
            http,
            w,
            "trading.open_portfolio",
            {
                "portfolio": {
                    "portfolio_id": pid,
                    "name": "Growth",
                    "base_currency": "USD",
                    "opened_at": t0,
                }
            },
        )
    )
    ok(
        call(
            http,
            w,
            "trading.deposit_cash",
            {
                "deposit": {
                    "deposit_id": uid("d"),
                    "portfolio_id": pid,
                    "amount": "10000",
                    "occurred_at": t0,
                }
            },
        )
    )
    before = dt.datetime.now(dt.UTC)
    out = ok(
        call(
            http,
            w,
            "trading.record_trade",
            {
                "trade": {
                    "trade_id": uid("t"),
                    "portfolio_id": pid,
                    "symbol": "MSFT",
                    "side": "buy",
                    "quantity": "10",
                    "price": "400.5",
                    "executed_at": t0,
                    "fees": "1",
                }
            },
        )
    )
    assert out["duplicate"] is False and out["first_version"] == 3
    now = ok(
        call(
            http,
            w,
            "trading.positions_as_of",
            {"portfolio_id": pid, "as_of": dt.datetime.now(dt.UTC).isoformat()},
        )
    )
    assert now["opened"] is True and now["cash"] == "5994.0"
    assert [(p["symbol"], p["quantity"], p["avg_cost"]) for p in now["positions"]] == [
        ("MSFT", "10", "400.500000000000")
    ]
    then = ok(
        call(
            http,
            w,
            "trading.positions_as_of",
            {"portfolio_id": pid, "as_of": (before - dt.timedelta(hours=1)).isoformat()},
        )
    )
    assert then["opened"] is False and then["positions"] == []
    projected = ok(call(http, w, "trading.get_positions", {"portfolio_id": pid}))
    assert set(projected["lag"]) == {"events", "seconds", "checkpoint"}


def test_append_without_key_is_recorded_once(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    body = {"stream": uid("notes"), "events": [{"type": "NoteAdded", "data": {"text": "hi"}}]}
    first = ok(call(http, w, "store.append", body))
    again = ok(call(http, w, "store.append", body))
    assert first["duplicate"] is False and again["duplicate"] is True
    conflict = call(
        http, w, "store.append", {**body, "expected_version": 0, "idempotency_key": uid("k")}
    )
    assert conflict.status_code == 409


def test_verify_is_for_admins(http: httpx.Client, keys: dict[str, str]) -> None:
    assert call(http, keys["writer"], "store.verify", {}).status_code == 403
    out = ok(call(http, keys["admin"], "store.verify", {}))
    assert out["ok"] is True and out["report"]["events_checked"] > 0


# -- routes, manual, auth, limits -----------------------------------------------------


def test_auth_matrix(http: httpx.Client, keys: dict[str, str]) -> None:
    body = go_body("storage.get_trade", {"id": "x"})
    assert http.post("/tools", content=body).status_code == 401
    assert (
        http.post("/tools", content=body, headers={"X-Api-Key": "esk_" + "a" * 43}).status_code
        == 401
    )
    assert http.post("/tools", content=body, headers={"X-Api-Key": "nonsense"}).status_code == 401
    assert call(http, keys["revoked"], "storage.get_trade", {"id": "x"}).status_code == 401
    assert call(http, keys["reader"], "storage.get_trade", {"id": "x"}).status_code == 404
    write = call(http, keys["reader"], "storage.save_event", {"event": event(uid("ev"))})
    assert write.status_code == 403
    bearer = {"Authorization": f"Bearer {keys['reader']}"}
    assert http.post("/tools", content=body, headers=bearer).status_code == 404
    assert (
        http.post("/tools", content=body, headers={"X-Api-Key": keys["reader"]}).status_code == 404
    )
    assert http.post(f"/tools?key={keys['reader']}", content=body).status_code == 404
    for path in ("/utcp", "/openapi.json", "/readyz", "/metrics"):
        assert http.get(path).status_code == 401, path
        assert http.get(path, headers=bearer).status_code == 200, path
    assert http.get("/healthz").status_code == 200


def test_manual(http: httpx.Client, base_url: str, keys: dict[str, str]) -> None:
    response = http.get("/utcp", headers={"X-Api-Key": keys["reader"]})
    manual = response.json()
    assert manual["utcp_version"].startswith("1.") and manual["manual_version"]
    names = [t["name"] for t in manual["tools"]]
    assert names == list(TOOLS)
    assert {
        "storage.save_event",
        "storage.save_trade",
        "storage.get_trade",
        "storage.list_trades",
    } <= set(names)
    assert "$ref" not in response.text and keys["reader"] not in response.text
    for tool in manual["tools"]:
        template = tool["tool_call_template"]
        assert template["url"] == f"{base_url}/tools/{tool['name']}"
        assert template["http_method"] == "POST" and template["body_field"] == "body"
        assert template["auth"]["api_key"].startswith("${")
        assert tool["description"] and tool["tags"]
        assert tool["inputs"]["properties"]["body"]["type"] == "object"
    save_trade = next(t for t in manual["tools"] if t["name"] == "storage.save_trade")
    trade_schema = save_trade["inputs"]["properties"]["body"]["properties"]["trade"]
    assert list(trade_schema["properties"])[:3] == ["id", "symbol", "direction"]
    openapi = http.get("/openapi.json", headers={"X-Api-Key": keys["reader"]}).json()
    assert "/tools/storage.get_trade" in openapi["paths"]


def test_per_tool_routes(http: httpx.Client, keys: dict[str, str]) -> None:
    headers = {"X-Api-Key": keys["writer"]}
    tid = uid("rt")
    saved = http.post("/tools/storage.save_trade", json={"trade": trade(tid)}, headers=headers)
    assert saved.status_code == 200 and saved.json() == {}
    got = http.post("/tools/storage.get_trade", json={"id": tid}, headers=headers)
    assert got.json()["trade"]["id"] == tid  # raw, not wrapped
    missing = http.post("/tools/storage.get_trade", json={"id": "nope"}, headers=headers)
    assert missing.status_code == 404
    assert missing.json() == {"error": "storage.get_trade: trade 'nope' not found"}
    unknown = http.post("/tools/storage.nothing", json={}, headers=headers)
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_unknown_tool_and_bad_body(http: httpx.Client, keys: dict[str, str]) -> None:
    response = call(http, keys["reader"], "storage.nothing", {})
    assert response.status_code == 404 and response.text.strip() == "unknown tool 'storage.nothing'"
    bad = http.post(f"/k/{keys['reader']}/tools", content=b"{not json")
    assert bad.status_code == 400 and len(bad.text.strip().splitlines()) == 1


def test_body_size_limit(http: httpx.Client, keys: dict[str, str]) -> None:
    big = event(uid("ev"), blob="x" * (70 * 1024))
    response = call(http, keys["writer"], "storage.save_event", {"event": big})
    assert response.status_code == 413


def test_metrics_count_calls(http: httpx.Client, keys: dict[str, str]) -> None:
    call(http, keys["reader"], "storage.get_trade", {"id": "x"})
    text = http.get("/metrics", headers={"X-Api-Key": keys["reader"]}).text
    assert 'eventstore_tool_calls_total{outcome="not_found",tool="storage.get_trade"}' in text
    assert "eventstore_pool_size" in text


def test_readyz(http: httpx.Client, keys: dict[str, str]) -> None:
    ready = http.get("/readyz", headers={"X-Api-Key": keys["reader"]})
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_readyz_when_the_schema_is_missing() -> None:
    name = f"utcp_svc_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        settings = ServiceSettings(dsn=dsn_for(name), no_auth=True, request_timeout=10)
        with running(build_app(settings), settings) as url, httpx.Client(base_url=url) as client:
            response = client.get("/readyz")
            assert response.status_code == 503 and "retry-after" in response.headers
            checks = response.json()["checks"]
            assert checks["database"] is True and "eventstore db deploy" in checks["schema"]
            tool = client.post("/tools", content=go_body("storage.get_trade", {"id": "x"}))
            assert tool.status_code == 503 and "retry-after" in tool.headers
            assert client.get("/healthz").status_code == 200
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_no_auth_only_on_loopback() -> None:
    with pytest.raises(Exception, match="loopback"):
        ServiceSettings(dsn="x", host="0.0.0.0", no_auth=True)  # noqa: S104
    assert json.loads(msgspec.json.encode(ServiceSettings(dsn="x", no_auth=True)))["no_auth"]


def test_list_trades_reply_stays_within_its_budget(
    http: httpx.Client, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from storectl.service import tools  # noqa: PLC0415

    w = keys["writer"]
    symbol = uid("B")
    for _ in range(3):
        ok(
            call(
                http,
                w,
                "storage.save_trade",
                {"trade": trade(uid("big"), symbol=symbol, notes="<&>" * 600)},
            )
        )
    whole = ok(call(http, w, "storage.list_trades", {"symbol": symbol}))["trades"]
    assert len(whole) == 3
    one = len(msgspec.json.encode(whole[0]))
    monkeypatch.setattr(tools, "REPLY_BUDGET", 2 * one + 10)
    capped = ok(call(http, w, "storage.list_trades", {"symbol": symbol}))["trades"]
    assert capped == whole[:2]


def test_event_payload_size_is_capped() -> None:
    # (the test service's 64 KiB body limit refuses such a request first: 413)
    big = event(uid("ev"), blob="x" * MAX_PAYLOAD_BYTES)
    decoded = msgspec.convert(big, AssistantEvent, strict=False)
    with pytest.raises(ValidationError, match=r"event\.payload is larger") as info:
        check_event(decoded, "storage.save_event")
    assert answer_for(info.value, "storage.save_event", "r").status == 400


def test_an_unexpected_failure_is_a_500_with_a_request_id(
    http: httpx.Client, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: Any, body: Any) -> Any:
        raise RuntimeError("internal detail that must not leak")

    name = "storage.get_trade"
    monkeypatch.setitem(TOOLS, name, msgspec.structs.replace(TOOLS[name], handler=broken))
    response = call(http, keys["reader"], name, {"id": "x"})
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert (
        response.text.strip()
        == f"{name}: internal error (request id {request_id}; see the service's log)"
    )
    raw = http.post(f"/tools/{name}", json={"id": "x"}, headers={"X-Api-Key": keys["reader"]})
    assert raw.status_code == 500 and "internal detail" not in raw.text
    assert raw.json()["error"].endswith(
        f"(request id {raw.headers['x-request-id']}; see the service's log)"
    )


def test_list_trades_ties_are_broken_by_id(http: httpx.Client, keys: dict[str, str]) -> None:
    w = keys["writer"]
    symbol = uid("T")
    same = "2026-05-05T05:05:05Z"
    ids = sorted(uid("tie") for _ in range(3))
    for tid in reversed(ids):
        ok(
            call(
                http, w, "storage.save_trade", {"trade": trade(tid, symbol=symbol, createdAt=same)}
            )
        )
    listed = ok(call(http, w, "storage.list_trades", {"symbol": symbol}))["trades"]
    assert [t["trade"]["id"] for t in listed] == ids
    assert {t["trade"]["createdAt"] for t in listed} == {same}


def test_store_append_cannot_forge_a_malformed_setup(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    tid = uid("forged")
    forged = {
        "stream": f"setup-{tid}",
        "events": [{"type": "TradeSetupRevised", "data": {"setup_id": tid, "revision": "x"}}],
    }
    response = call(http, keys["writer"], "store.append", forged)
    assert response.status_code == 400 and "TradeSetupRevised" in response.text
    assert call(http, keys["reader"], "storage.get_trade", {"id": tid}).status_code == 404


def test_what_the_database_refuses_to_the_service_role_is_a_403(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    # projection-* streams hold operators' decisions: the service's writer role may not
    body = {"stream": f"projection-{uid('x')}", "events": [{"type": "Note", "data": {}}]}
    response = call(http, keys["admin"], "store.append", body)
    assert response.status_code == 403, response.text
