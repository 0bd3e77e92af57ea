"""Key management over HTTP (the admin tools keys.add, keys.list and
keys.revoke): on both transports, admin only, written through the service's
--keys-dsn (an operator role; 503 without one), the secret shown once and
never logged, a key revoked over HTTP refused from the next call on."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any, cast

import httpx
import msgspec
import pytest

from eventstore.store import EventStore
from storectl.cli import build_parser
from storectl.service import ServiceSettings, build_app
from storectl.service.command import KEYS_DSN_ENV, settings_from
from storectl.service.keys import KeyCache, hash_key
from storectl.service.server import running
from storectl.service.tools import NO_KEYS_DSN

LIST_TRADES = b'{"tool":"storage.list_trades","input":{"limit":1}}'


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def raw_call(http: httpx.Client, key: str, tool: str, body: dict[str, Any]) -> httpx.Response:
    """The per-tool route, as the UTCP manual describes it."""
    return http.post(
        f"/tools/{tool}", content=msgspec.json.encode(body), headers={"X-Api-Key": key}
    )


def go_call(http: httpx.Client, key: str, tool: str, body: dict[str, Any]) -> httpx.Response:
    """The assistant's transport: ``{"tool", "input"}`` to ``/k/KEY/tools``."""
    return http.post(f"/k/{key}/tools", content=msgspec.json.encode({"tool": tool, "input": body}))


def output(response: httpx.Response, *, wrapped: bool) -> Any:
    assert response.status_code == 200, response.text
    data = response.json()
    return data["output"] if wrapped else data


@pytest.fixture(scope="module")
def keyless_url(service_dsn: str, keys: dict[str, str]) -> Iterator[str]:
    """A service started without --keys-dsn."""
    settings = ServiceSettings(dsn=service_dsn, key_cache_seconds=0)
    with running(build_app(settings), settings) as url:
        yield url


@pytest.fixture(scope="module")
def cached_url(service_dsn: str, operator_dsn: str, keys: dict[str, str]) -> Iterator[str]:
    """A service that trusts a looked-up key for a minute."""
    settings = ServiceSettings(dsn=service_dsn, keys_dsn=operator_dsn, key_cache_seconds=60)
    with running(build_app(settings), settings) as url:
        yield url


@pytest.mark.parametrize("wrapped", [False, True], ids=["per-tool", "go-transport"])
def test_admin_adds_lists_and_revokes(
    http: httpx.Client, keys: dict[str, str], wrapped: bool
) -> None:
    call = go_call if wrapped else raw_call
    admin = keys["admin"]
    name = uid("http-key")
    added = output(call(http, admin, "keys.add", {"name": name, "role": "reader"}), wrapped=wrapped)
    assert added["name"] == name and added["role"] == "reader"
    secret = added["key"]
    assert secret.startswith("esk_") and len(secret) == 47
    # the new key works at once, with its role
    assert http.post("/tools", content=LIST_TRADES, headers={"X-Api-Key": secret}).is_success
    assert raw_call(http, secret, "keys.list", {}).status_code == 403

    listed = call(http, admin, "keys.list", {})
    assert secret not in listed.text and hash_key(secret).hex() not in listed.text
    rows = {row["name"]: row for row in output(listed, wrapped=wrapped)["keys"]}
    assert set(rows[name]) == {"name", "role", "created_at", "revoked_at"}
    assert rows[name]["revoked_at"] is None and rows["test-revoked"]["revoked_at"] is not None

    revoked = output(call(http, admin, "keys.revoke", {"name": name}), wrapped=wrapped)
    assert revoked["name"] == name and revoked["revoked_at"] is not None
    # refused from the very next call (the session's service: key_cache_seconds=0)
    refused = http.post("/tools", content=LIST_TRADES, headers={"X-Api-Key": secret})
    assert refused.status_code == 401, refused.text
    # for good: a second revoke and a reused name are refused
    again = call(http, admin, "keys.revoke", {"name": name})
    assert again.status_code == 400 and "already revoked" in again.text
    reused = call(http, admin, "keys.add", {"name": name, "role": "admin"})
    assert reused.status_code == 400 and "exists already" in reused.text
    unknown = call(http, admin, "keys.revoke", {"name": uid("never")})
    assert unknown.status_code == 400 and "no key named" in unknown.text
    bad = call(http, admin, "keys.add", {"name": uid("x"), "role": "root"})
    assert bad.status_code == 400 and "role" in bad.text


def test_a_key_revoked_over_http_is_refused_despite_the_cache(
    cached_url: str, keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=cached_url, timeout=30) as http:
        added = raw_call(http, keys["admin"], "keys.add", {"name": uid("cached"), "role": "reader"})
        secret = added.json()["key"]
        for _ in range(2):  # looked up, then from the cache
            ok = http.post("/tools", content=LIST_TRADES, headers={"X-Api-Key": secret})
            assert ok.status_code == 200
        revoke = raw_call(http, keys["admin"], "keys.revoke", {"name": added.json()["name"]})
        assert revoke.status_code == 200
        gone = http.post("/tools", content=LIST_TRADES, headers={"X-Api-Key": secret})
        assert gone.status_code == 401, gone.text


@pytest.mark.parametrize("role", ["reader", "writer"])
@pytest.mark.parametrize("tool", ["keys.add", "keys.list", "keys.revoke"])
def test_only_admins_manage_keys(
    http: httpx.Client, keys: dict[str, str], role: str, tool: str
) -> None:
    body = {"name": "test-admin", "role": "admin"} if tool == "keys.add" else {}
    if tool == "keys.revoke":
        body = {"name": "test-admin"}
    for call in (raw_call, go_call):
        response = call(http, keys[role], tool, body)
        assert response.status_code == 403, response.text
        assert f"needs an admin key (this key is a {role})" in response.text
    # the admin key they tried to revoke still works
    assert raw_call(http, keys["admin"], "keys.list", {}).status_code == 200


def test_without_a_keys_dsn_writes_answer_503(keyless_url: str, keys: dict[str, str]) -> None:
    with httpx.Client(base_url=keyless_url, timeout=30) as http:
        for tool, body in (
            ("keys.add", {"name": uid("nodsn"), "role": "reader"}),
            ("keys.revoke", {"name": "test-admin"}),
        ):
            raw = raw_call(http, keys["admin"], tool, body)
            assert raw.status_code == 503, raw.text
            assert raw.json() == {"error": f"{tool}: {NO_KEYS_DSN}"}
            wrapped = go_call(http, keys["admin"], tool, body)
            assert wrapped.status_code == 503
            assert wrapped.text == f"{tool}: {NO_KEYS_DSN}\n"
        # reading needs no operator: the service's own role may read the key list
        listed = raw_call(http, keys["admin"], "keys.list", {})
        assert listed.status_code == 200
        rows = {row["name"]: row for row in listed.json()["keys"]}
        assert rows["test-admin"]["revoked_at"] is None  # the refused revoke did nothing


def test_the_secret_is_shown_once_and_never_logged(
    http: httpx.Client, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    name = uid("once")
    with caplog.at_level(logging.DEBUG):
        added = raw_call(http, keys["admin"], "keys.add", {"name": name, "role": "writer"})
        secret = added.json()["key"]
        used = http.post("/tools", content=LIST_TRADES, headers={"X-Api-Key": secret})
        listed = go_call(http, keys["admin"], "keys.list", {})
        revoked = go_call(http, keys["admin"], "keys.revoke", {"name": name})
        refused = http.post(f"/k/{secret}/tools", content=LIST_TRADES)
    assert (used.status_code, listed.status_code, revoked.status_code) == (200, 200, 200)
    assert refused.status_code == 401
    assert added.text.count(secret) == 1
    for response in (used, listed, revoked, refused):
        assert secret not in response.text
        assert hash_key(secret).hex() not in response.text
    access = [r.getMessage() for r in caplog.records if r.name == "storectl.service.access"]
    assert any('"tool":"keys.add"' in line and '"key":"test-admin"' in line for line in access)
    assert len(access) >= 5
    # every log line of the process but the test's own HTTP client's (httpx
    # logs the URLs it calls, /k/KEY/tools among them): uvicorn's, the service's
    service_side = [
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    ]
    assert any(line.startswith("storectl.service.access") for line in service_side)
    assert not [line for line in service_side if secret[4:] in line]


def test_serve_takes_the_keys_dsn_from_its_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    base = ["serve", "--dsn", "postgresql://svc@db/utcp"]
    monkeypatch.delenv(KEYS_DSN_ENV, raising=False)
    assert settings_from(parser.parse_args(base)).keys_dsn is None
    monkeypatch.setenv(KEYS_DSN_ENV, "postgresql://op@db/utcp")
    assert settings_from(parser.parse_args(base)).keys_dsn == "postgresql://op@db/utcp"
    flagged = parser.parse_args([*base, "--keys-dsn", "postgresql://other@db/utcp"])
    assert settings_from(flagged).keys_dsn == "postgresql://other@db/utcp"


class _Keys:
    """A stand-in for the store's key lookup: the rows it answers, counted."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = [("k", "reader")]
        self.queries = 0

    def query(self, operation: str, sql: object, params: tuple[object, ...]) -> list[Any]:
        self.queries += 1
        return list(self.rows)


def test_the_key_cache_trusts_an_answer_for_its_ttl_at_most() -> None:
    now = [100.0]
    cache = KeyCache(5.0, clock=lambda: now[0])
    db = _Keys()
    store = cast(EventStore, db)
    key = "esk_" + "A" * 43
    assert cache.lookup(store, key) == ("k", "reader")
    db.rows = []  # revoked in the database
    now[0] = 104.9
    assert cache.lookup(store, key) == ("k", "reader")  # within the TTL: remembered
    assert db.queries == 1
    now[0] = 105.0
    assert cache.lookup(store, key) is None  # the TTL is over: looked up again, refused
    assert db.queries == 2
    # forget(): a key revoked through this service is refused at once
    db.rows = [("k", "reader")]
    now[0] = 200.0
    assert cache.lookup(store, key) == ("k", "reader")
    cache.forget("k")
    db.rows = []
    assert cache.lookup(store, key) is None
    # with ttl 0 every call is looked up
    fresh = KeyCache(0.0, clock=lambda: now[0])
    queries = db.queries
    for _ in range(3):
        fresh.lookup(store, key)
    assert db.queries == queries + 3
