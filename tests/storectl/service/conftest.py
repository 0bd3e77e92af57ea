"""The service on a loopback port, in this process, on a fresh database:
a writer role for the service, keys made by an operator role."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from storectl.service import ServiceSettings, build_app
from storectl.service.keys import add_key, revoke_key
from storectl.service.server import running
from tests.support.database import deployed_database, login_role


@pytest.fixture(scope="session")
def service_db() -> Iterator[str]:
    with deployed_database("utcp_svc") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def service_dsn(service_db: str) -> Iterator[str]:
    """The service's own login role: a member of utcp_writer only."""
    with login_role(service_db, "utcp_writer") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def operator_dsn(service_db: str) -> Iterator[str]:
    """An operator's login role (a member of utcp_operator): makes keys, and
    is the service's --keys-dsn."""
    with login_role(service_db, "utcp_operator") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def keys(operator_dsn: str) -> dict[str, str]:
    """Secrets of a reader, writer and admin key, and of a revoked one,
    made as an operator would."""
    made = {
        role: add_key(operator_dsn, f"test-{role}", role)[1]
        for role in ("reader", "writer", "admin")
    }
    made["revoked"] = add_key(operator_dsn, "test-revoked", "writer")[1]
    revoke_key(operator_dsn, "test-revoked")
    return made


@pytest.fixture(scope="session")
def service_settings(service_dsn: str, operator_dsn: str) -> ServiceSettings:
    return ServiceSettings(
        dsn=service_dsn, keys_dsn=operator_dsn, key_cache_seconds=0, max_body_bytes=64 * 1024
    )


@pytest.fixture(scope="session")
def base_url(service_settings: ServiceSettings, keys: dict[str, str]) -> Iterator[str]:
    with running(build_app(service_settings), service_settings) as url:
        yield url


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client
