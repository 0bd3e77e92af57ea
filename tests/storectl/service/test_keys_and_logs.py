"""Keys through the CLI (as an operator), the access log (keys redacted),
and the error → status mapping."""

from __future__ import annotations

import logging
import uuid

import httpx
import msgspec
import psycopg
import pytest

from eventstore import EventStore, Settings
from eventstore.errors import (
    AppendOutcomeUnknown,
    DuplicateEventId,
    IdempotencyConflict,
    SchemaNotDeployed,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from storectl.service.errors import ToolError, answer_for
from storectl.service.keys import add_key, revoke_key
from tests.support.database import login_role, run_cli


def test_keys_cli_add_list_revoke(service_db: str, base_url: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    with login_role(service_db, "utcp_operator") as operator:
        added = run_cli("keys", "add", name, "--role", "reader", "--dsn", operator)
        secret = added.stdout.strip()
        assert secret.startswith("esk_") and "shown only this once" in added.stderr
        listed = run_cli("keys", "list", "--json", "--dsn", operator).stdout
        assert name in listed and secret not in listed
        with httpx.Client(base_url=base_url) as client:
            assert client.get("/utcp", headers={"X-Api-Key": secret}).status_code == 200
            run_cli("keys", "revoke", name, "--dsn", operator)
            assert client.get("/utcp", headers={"X-Api-Key": secret}).status_code == 401
        with EventStore.open(operator, Settings(pool_min_size=1, pool_max_size=1)) as store:
            with pytest.raises(ValidationError, match="already revoked"):
                revoke_key(store, name)
            with pytest.raises(ValidationError, match="exists already"):
                add_key(store, name, "reader")
            with pytest.raises(ValidationError, match="no key named"):
                revoke_key(store, "never-made")


def test_a_writer_role_cannot_make_keys(service_dsn: str) -> None:
    refused = run_cli("keys", "add", "sneaky", "--role", "admin", "--dsn", service_dsn, check=False)
    assert refused.returncode != 0 and "permission denied" in refused.stderr


def test_access_log_line_per_call_without_the_key(
    http: httpx.Client, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    key = keys["reader"]
    with caplog.at_level(logging.INFO, logger="storectl.service.access"):
        http.post(f"/k/{key}/tools", content=b'{"tool":"storage.get_trade","input":{"id":"x"}}')
        http.post(f"/tools?key={key}", content=b'{"tool":"storage.get_trade","input":{"id":"y"}}')
    lines = [r.getMessage() for r in caplog.records if r.name == "storectl.service.access"]
    assert len(lines) >= 2
    for line in lines[-2:]:
        record = msgspec.json.decode(line)
        assert key not in line
        assert record["tool"] == "storage.get_trade" and record["status"] == 404
        assert record["role"] == "reader" and record["key"] == "test-reader"
        assert record["request_id"] and record["duration_ms"] >= 0
    assert msgspec.json.decode(lines[-2])["path"] == "/k/***/tools"


@pytest.mark.parametrize(
    ("exc", "status", "retry"),
    [
        (ToolError(404, "t: trade 'x' not found"), 404, False),
        (ValidationError("bad", field="x"), 400, False),
        (WrongExpectedVersion("v", expected=1, actual=2), 409, False),
        (IdempotencyConflict("k"), 409, False),
        (DuplicateEventId("d"), 409, False),
        (StorageUnavailable("down"), 503, True),
        (SchemaNotDeployed("no schema"), 503, True),
        (AppendOutcomeUnknown("lost", event_ids=()), 503, True),
        (TimeoutError(), 504, False),
        (StorageError("permission denied", sqlstate="42501"), 403, False),
        (StorageError("boom"), 500, False),
        (RuntimeError("secret detail"), 500, False),
    ],
)
def test_status_mapping(exc: BaseException, status: int, retry: bool) -> None:
    answer = answer_for(exc, "t", "req123")
    assert (answer.status, answer.retry_after) == (status, retry)
    assert "\n" not in answer.message
    if status == 500:
        assert "req123" in answer.message and "secret detail" not in answer.message
    if isinstance(exc, AppendOutcomeUnknown | TimeoutError):
        assert "Repeating the same call is safe" in answer.message


def test_a_revocation_is_for_good(service_db: str) -> None:
    with (
        login_role(service_db, "utcp_operator") as operator,
        EventStore.open(operator, Settings(pool_min_size=1, pool_max_size=1)) as store,
    ):
        name = f"once-{uuid.uuid4().hex[:8]}"
        add_key(store, name, "admin")
        revoke_key(store, name)
        with psycopg.connect(operator, autocommit=True) as conn:
            for change in ("revoked_at = NULL", "revoked_at = now() + interval '1 year'"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only be revoked"):
                    conn.execute(f"UPDATE utcp.api_keys SET {change} WHERE name = %s", (name,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM utcp.api_keys WHERE name = %s", (name,))
