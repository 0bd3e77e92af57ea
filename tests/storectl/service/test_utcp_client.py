"""The official Python UTCP client (``utcp`` + ``utcp-http``) against the
service: it registers the manual from ``GET /utcp`` with only the URL and a
key, and calls every tool, including failures and a wrong key; over plain
http on loopback (the only place the client allows it) and over https with a
throwaway self-signed certificate (in a subprocess told to trust it through
``SSL_CERT_FILE``, as an operator would)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from utcp.data.utcp_client_config import UtcpClientConfig
from utcp.utcp_client import UtcpClient
from utcp_http.http_call_template import HttpCallTemplate

from storectl.service import ServiceSettings, build_app
from storectl.service.server import running
from storectl.service.tools import TOOLS

#: Not a prefix of any tool's name (the client prefixes names unless they start with it).
MANUAL = "eventstore"
#: The manual's ${EVENTSTORE_API_KEY}, namespaced by the manual's name as the client does.
KEY_VARIABLE = f"{MANUAL}_EVENTSTORE_API_KEY"
NOW = "now"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def client_for(url: str, key: str) -> UtcpClient:
    """A UTCP client that knows only the manual's URL and a key."""
    config = UtcpClientConfig(variables={KEY_VARIABLE: key})
    client = await UtcpClient.create(config=config)
    template = HttpCallTemplate(
        name=MANUAL,
        call_template_type="http",
        url=f"{url}/utcp",
        http_method="GET",
        auth={
            "auth_type": "api_key",
            "api_key": key,
            "var_name": "X-Api-Key",
            "location": "header",
        },
    )
    result = await client.register_manual(template)
    assert result.success, result.errors
    return client


def every_tool_call(pid: str) -> list[tuple[str, dict[str, Any], str]]:
    """(tool, input, expectation) for every tool, in an order that works:
    "ok" or an error status the call must fail with."""
    symbol = uid("U")
    setup = uid("setup")
    signal = {
        "id": uid("sig"),
        "symbol": symbol,
        "type": "signal.generated",
        "time": "2026-12-01T10:30:00.5Z",
        "payload": {"score": 0.8},
    }
    trade = {
        "id": setup,
        "symbol": symbol,
        "direction": "long",
        "entry": 101.5,
        "stop": 99.0,
        "targets": [105.0],
        "strategyId": "utcp",
        "createdAt": "0001-01-01T00:00:00Z",
    }
    t0 = "2026-12-01T09:00:00Z"
    trade_id = uid("t")
    key_name = uid("utcp-key")
    return [
        ("storage.save_event", {"event": signal}, "ok"),
        ("storage.save_event", {"event": {**signal, "payload": {"score": 0.1}}}, "409"),
        (
            "storage.save_trade",
            {"trade": trade, "risk": {"positionSize": 40, "totalRisk": 100.0}, "event": signal},
            "ok",
        ),
        (
            "storage.save_trade",
            {
                "trade": {**trade, "stop": 99.5, "eventId": signal["id"]},
                "risk": {"positionSize": 40, "totalRisk": 80.0},
            },
            "ok",
        ),
        ("storage.save_trade", {"trade": {**trade, "id": " "}}, "400"),
        ("storage.get_trade", {"id": setup}, "ok"),
        ("storage.get_trade", {"id": uid("missing")}, "404"),
        ("storage.list_trades", {"symbol": symbol, "limit": 5}, "ok"),
        ("storage.list_trade_revisions", {"id": setup}, "ok"),
        (
            "store.append",
            {"stream": uid("notes"), "events": [{"type": "NoteAdded", "data": {"n": 1}}]},
            "ok",
        ),
        ("store.append", {"stream": uid("notes"), "events": []}, "400"),
        ("store.read_stream", {"stream": f"setup-{setup}"}, "ok"),
        ("store.read_log", {"limit": 5}, "ok"),
        (
            "trading.open_portfolio",
            {
                "portfolio": {
                    "portfolio_id": pid,
                    "name": "UTCP",
                    "base_currency": "USD",
                    "opened_at": t0,
                }
            },
            "ok",
        ),
        (
            "trading.deposit_cash",
            {
                "deposit": {
                    "deposit_id": uid("d"),
                    "portfolio_id": pid,
                    "amount": "5000",
                    "occurred_at": t0,
                }
            },
            "ok",
        ),
        (
            "trading.withdraw_cash",
            {
                "withdrawal": {
                    "withdrawal_id": uid("w"),
                    "portfolio_id": pid,
                    "amount": "100",
                    "occurred_at": t0,
                }
            },
            "ok",
        ),
        (
            "trading.record_trade",
            {
                "trade": {
                    "trade_id": trade_id,
                    "portfolio_id": pid,
                    "symbol": symbol,
                    "side": "buy",
                    "quantity": "10",
                    "price": "101.5",
                    "executed_at": t0,
                }
            },
            "ok",
        ),
        (
            "trading.cancel_trade",
            {
                "cancel": {
                    "trade_id": trade_id,
                    "portfolio_id": pid,
                    "reason": "booked in error",
                    "occurred_at": "2026-12-01T09:05:00Z",
                }
            },
            "ok",
        ),
        ("trading.get_positions", {"portfolio_id": pid}, "ok"),
        ("trading.get_portfolio", {"portfolio_id": pid}, "ok"),
        (
            "trading.positions_as_of",
            {"portfolio_id": pid, "as_of": NOW},  # the time of the call
            "ok",
        ),
        ("trading.positions_as_of", {"portfolio_id": pid, "as_of": "yesterday"}, "400"),
        ("audit.query", {"symbol": symbol}, "ok"),
        ("store.verify", {}, "ok"),
        ("keys.add", {"name": key_name, "role": "reader"}, "ok"),
        ("keys.add", {"name": key_name, "role": "reader"}, "400"),
        ("keys.list", {}, "ok"),
        ("keys.revoke", {"name": key_name}, "ok"),
        ("keys.revoke", {"name": key_name}, "400"),
    ]


async def call_every_tool(url: str, key: str) -> dict[str, Any]:
    client = await client_for(url, key)
    registered = sorted(tool.name for tool in await client.config.tool_repository.get_tools())
    assert registered == sorted(f"{MANUAL}.{name}" for name in TOOLS)
    results: dict[str, Any] = {}
    pid = uid("p")
    for name, planned, expect in every_tool_call(pid):
        body = planned
        if body.get("as_of") == NOW:
            body = {**planned, "as_of": dt.datetime.now(dt.UTC).isoformat()}
        label = f"{name} {expect}"
        if expect == "ok":
            results[label] = await client.call_tool(f"{MANUAL}.{name}", {"body": body})
        else:
            with pytest.raises(Exception, match=expect) as info:
                await client.call_tool(f"{MANUAL}.{name}", {"body": body})
            results[label] = str(info.value)
    return results


def test_the_utcp_client_finds_and_calls_every_tool(base_url: str, keys: dict[str, str]) -> None:
    results = asyncio.run(call_every_tool(base_url, keys["admin"]))
    called = {label.split()[0] for label in results}
    assert called == set(TOOLS)  # every tool, through the manual alone
    assert results["storage.save_event ok"] == {}
    assert "storage.save_event" in results["storage.save_event 409"]
    got = results["storage.get_trade ok"]
    assert got["trade"]["stop"] == 99.5 and got["risk"]["positionSize"] == 40
    assert got["event"]["payload"] == {"score": 0.8}
    assert "not found" in results["storage.get_trade 404"]
    assert len(results["storage.list_trades ok"]["trades"]) == 1
    assert [r["revision"] for r in results["storage.list_trade_revisions ok"]["revisions"]] == [
        1,
        2,
    ]
    assert results["trading.get_positions ok"]["positions"] == []  # the buy was cancelled
    assert results["trading.positions_as_of ok"]["cash"] == "4900.0"
    assert results["store.verify ok"]["ok"] is True
    assert "as_of" in results["trading.positions_as_of 400"]
    added = results["keys.add ok"]
    assert added["key"].startswith("esk_") and added["role"] == "reader"
    listed = {k["name"]: k for k in results["keys.list ok"]["keys"]}
    assert listed[added["name"]]["revoked_at"] is None and "key" not in listed[added["name"]]
    assert results["keys.revoke ok"]["revoked_at"] is not None
    assert "already revoked" in results["keys.revoke 400"]


def test_the_utcp_client_with_a_wrong_key_or_a_low_role(
    base_url: str, keys: dict[str, str]
) -> None:
    async def scenario() -> None:
        wrong = await UtcpClient.create(
            config=UtcpClientConfig(variables={KEY_VARIABLE: "esk_" + "x" * 43})
        )
        template = HttpCallTemplate(name=MANUAL, url=f"{base_url}/utcp", http_method="GET")
        refused = await wrong.register_manual(template)
        assert not refused.success and "401" in " ".join(refused.errors)

        # a reader registers the manual, then its key cannot write or verify
        reader = await client_for(base_url, keys["reader"])
        with pytest.raises(Exception, match="403"):
            await reader.call_tool(f"{MANUAL}.store.verify", {"body": {}})
        with pytest.raises(Exception, match="403"):
            await reader.call_tool(
                f"{MANUAL}.storage.save_event",
                {
                    "body": {
                        "event": {
                            "id": uid("e"),
                            "symbol": "X",
                            "type": "t",
                            "time": "2026-01-01T00:00:00Z",
                            "payload": None,
                        }
                    }
                },
            )
        # the manual's tools carry the key placeholder: a client given a revoked key fails
        revoked = await UtcpClient.create(config=UtcpClientConfig(variables={}))
        registered = await revoked.register_manual(
            HttpCallTemplate(
                name=MANUAL,
                url=f"{base_url}/utcp",
                http_method="GET",
                auth={
                    "auth_type": "api_key",
                    "api_key": keys["reader"],
                    "var_name": "X-Api-Key",
                    "location": "header",
                },
            )
        )
        assert registered.success
        revoked.config.variables = {KEY_VARIABLE: keys["revoked"]}
        with pytest.raises(Exception, match="401"):
            await revoked.call_tool(f"{MANUAL}.storage.get_trade", {"body": {"id": "x"}})

    asyncio.run(scenario())


# -- TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventstore test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = folder / "cert.pem"
    key_file = folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_url(
    service_dsn: str, certificate: tuple[Path, Path], keys: dict[str, str]
) -> Iterator[str]:
    cert, key = certificate
    settings = ServiceSettings(
        dsn=service_dsn, key_cache_seconds=0, tls_certfile=str(cert), tls_keyfile=str(key)
    )
    with running(build_app(settings), settings) as url:
        assert url.startswith("https://")
        yield url


#: Run by a fresh interpreter whose OpenSSL trusts the test certificate
#: (SSL_CERT_FILE is read when aiohttp makes its default TLS context).
TLS_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from utcp.data.utcp_client_config import UtcpClientConfig
    from utcp.utcp_client import UtcpClient
    from utcp_http.http_call_template import HttpCallTemplate

    async def main(url, key):
        client = await UtcpClient.create(
            config=UtcpClientConfig(variables={"eventstore_EVENTSTORE_API_KEY": key})
        )
        auth = {"auth_type": "api_key", "api_key": key, "var_name": "X-Api-Key",
                "location": "header"}
        result = await client.register_manual(
            HttpCallTemplate(name="eventstore", url=url + "/utcp", http_method="GET", auth=auth)
        )
        out = {"registered": result.success, "errors": result.errors,
               "tools": len(result.manual.tools)}
        if result.success:
            out["urls"] = sorted({t.tool_call_template.url.split("/tools/")[0]
                                  for t in result.manual.tools})
            out["listed"] = await client.call_tool(
                "eventstore.storage.list_trades", {"body": {"limit": 1}})
            try:
                await client.call_tool("eventstore.storage.get_trade", {"body": {"id": "nope"}})
            except Exception as exc:
                out["missing"] = str(exc)
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def run_tls_client(url: str, key: str, cert_file: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if cert_file is not None:
        env["SSL_CERT_FILE"] = str(cert_file)
    done = subprocess.run(
        [sys.executable, "-c", TLS_CLIENT, url, key],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_utcp_client_over_tls(
    tls_url: str, certificate: tuple[Path, Path], keys: dict[str, str]
) -> None:
    out = run_tls_client(tls_url, keys["reader"], certificate[0])
    assert out["registered"], out["errors"]
    assert out["tools"] == len(TOOLS)
    assert out["urls"] == [tls_url]  # the manual's absolute URLs are https too
    assert "trades" in out["listed"]
    assert "404" in out["missing"] and "not found" in out["missing"]


def test_the_utcp_client_refuses_an_untrusted_certificate(
    tls_url: str, keys: dict[str, str]
) -> None:
    out = run_tls_client(tls_url, keys["reader"], None)
    assert not out["registered"]
    assert "certificate" in " ".join(out["errors"]).lower()
