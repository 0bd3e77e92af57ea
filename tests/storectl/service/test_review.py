"""An outside review of the service, as a user, an operator and an attacker
would try it: each test here failed before the fix it comes with."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from storectl.service import ServiceSettings, build_app
from storectl.service.server import running

ASSISTANT_EVENT = {
    "id": "review-deep",
    "symbol": "AAPL",
    "type": "signal",
    "time": "2026-12-01T10:30:00Z",
}


def _wrapped(http: httpx.Client, key: str, tool: str, payload: Any) -> httpx.Response:
    body = json.dumps({"tool": tool, "input": payload}).encode()
    return http.post(f"/k/{key}/tools", content=body)


@pytest.mark.parametrize(
    ("tool", "payload"),
    [
        ("storage.get_trade", {"id": "a\u0000b"}),
        ("storage.list_trades", {"symbol": "\u0000"}),
        ("storage.list_trades", {"strategyId": "x\u0000"}),
        ("store.read_log", {"types": ["\u0000"]}),
        ("trading.get_positions", {"portfolio_id": "p\u0000"}),
        ("trading.get_portfolio", {"portfolio_id": "p\u0000"}),
        ("audit.query", {"type": "\u0000"}),
        ("audit.query", {"symbol": "\u0000"}),
    ],
)
def test_a_nul_character_in_a_read_is_a_400_not_a_500(
    http: httpx.Client, keys: dict[str, str], tool: str, payload: dict[str, Any]
) -> None:
    """PostgreSQL text cannot hold NUL: the driver refuses the parameter
    before it is sent. That is the caller's input, not a storage failure."""
    response = _wrapped(http, keys["admin"], tool, payload)
    assert response.status_code == 400, response.text
    assert "NUL" in response.text
    assert "request id" not in response.text


@pytest.mark.parametrize("wrapped", [True, False])
def test_json_nested_too_deep_is_a_400_not_a_500(
    http: httpx.Client, keys: dict[str, str], wrapped: bool
) -> None:
    """msgspec raises RecursionError past its depth limit: a hostile body
    (a few KiB of brackets) must not be an internal error."""
    deep = b"[" * 5000 + b"]" * 5000
    event = json.dumps(ASSISTANT_EVENT).encode()[:-1] + b', "payload": {"a": ' + deep + b"}}"
    if wrapped:
        body = b'{"tool": "storage.save_event", "input": {"event": ' + event + b"}}"
        response = http.post(f"/k/{keys['writer']}/tools", content=body)
        assert response.headers["content-type"].startswith("text/plain")
    else:
        response = http.post(
            "/tools/storage.save_event",
            content=b'{"event": ' + event + b"}",
            headers={"X-Api-Key": keys["writer"]},
        )
        assert "error" in response.json()
    assert response.status_code == 400, response.text
    assert "nested" in response.text


def test_no_auth_refuses_a_request_from_a_web_page(service_dsn: str) -> None:
    """Without keys, anything that can reach loopback may call the tools:
    also a web page in the operator's browser (a text/plain POST needs no
    CORS preflight; DNS rebinding makes the page same-origin). Browsers
    always send Origin on such a request, non-browser clients do not."""
    settings = ServiceSettings(dsn=service_dsn, no_auth=True)
    body = json.dumps({"tool": "storage.list_trades", "input": {"limit": 1}}).encode()
    with (
        running(build_app(settings), settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        plain = client.post("/tools", content=body)
        assert plain.status_code == 200, plain.text
        for origin in ("https://evil.example", "http://127.0.0.1:1234", "null"):
            page = client.post(
                "/tools", content=body, headers={"Origin": origin, "Content-Type": "text/plain"}
            )
            assert page.status_code == 403, page.text
            assert "web page" in page.text
            single = client.post(
                "/tools/storage.list_trades", content=b"{}", headers={"Origin": origin}
            )
            assert single.status_code == 403
            assert "error" in single.json()


@pytest.mark.parametrize("problem", ["missing", "swapped"])
def test_serve_with_unusable_tls_files_fails_with_one_line(tmp_path: Path, problem: str) -> None:
    """An operator's mistake in --tls-cert/--tls-key is an error message
    naming the files, not a traceback out of uvicorn's startup."""
    if problem == "missing":
        cert, key = tmp_path / "nope.pem", tmp_path / "nope.key"
    else:  # a certificate where the key should be, and the other way round
        cert, key = tmp_path / "key.pem", tmp_path / "cert.pem"
        cert.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        key.write_text("not a certificate\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "storectl",
            "serve",
            "--port",
            "0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--dsn",
            "postgresql://nobody@127.0.0.1:1/none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert str(cert) in proc.stderr


def test_a_setups_revisions_come_in_pages_under_the_reply_limit(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    """The assistant's client reads at most 1 MiB of a reply: a setup with
    many large revisions (notes of 2000 characters that JSON escapes to six
    bytes each) is answered in pages, each under the limit, none lost."""
    setup_id = f"review-revisions-{uuid.uuid4().hex[:8]}"
    trade = {
        "id": setup_id,
        "symbol": "REV",
        "direction": "long",
        "entry": 10.0,
        "stop": 9.0,
        "targets": [11.0] * 32,
        "strategyId": "review",
        "notes": "\u0001" * 2000,
        "createdAt": "0001-01-01T00:00:00Z",
    }
    saves = 100
    for stop in range(saves):
        saved = _wrapped(
            http, keys["writer"], "storage.save_trade", {"trade": {**trade, "stop": stop}}
        )
        assert saved.status_code == 200, saved.text
    seen: list[int] = []
    page_input: dict[str, Any] = {"id": setup_id}
    for _ in range(saves):
        response = _wrapped(http, keys["reader"], "storage.list_trade_revisions", page_input)
        assert response.status_code == 200, response.text
        assert len(response.content) < 1024 * 1024
        output = response.json()["output"]
        seen += [revision["revision"] for revision in output["revisions"]]
        if output.get("next") is None:
            break
        page_input = {"id": setup_id, "afterRevision": output["next"]}
    assert seen == list(range(1, saves + 1))


def test_a_per_tool_route_answers_a_wrong_method_or_path_in_json(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    """The manual's tool routes answer errors as JSON {"error"}: also the
    router's own 404 and 405, not Starlette's plain "Not Found"."""
    headers = {"X-Api-Key": keys["reader"]}
    wrong_method = http.get("/tools/storage.get_trade", headers=headers)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "GET /tools/storage.get_trade: method not allowed"}
    wrong_path = http.post("/tools/storage.get_trade/x", content=b"{}", headers=headers)
    assert wrong_path.status_code == 404
    assert wrong_path.json() == {"error": "POST /tools/storage.get_trade/x: no such route"}
    # /tools itself (the assistant's transport) answers one plain-text line
    plain = http.get("/tools")
    assert plain.status_code == 405
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text == "GET /tools: method not allowed\n"
    with_key = http.get(f"/k/{keys['reader']}/tools")
    assert with_key.status_code == 405
    assert keys["reader"] not in with_key.text


def test_the_403_for_an_admin_tool_reads_well(http: httpx.Client, keys: dict[str, str]) -> None:
    response = _wrapped(http, keys["writer"], "store.verify", {})
    assert response.status_code == 403
    assert response.text == "store.verify: needs an admin key (this key is a writer)\n"
