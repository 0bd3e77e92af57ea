"""API keys of the service: made here, stored hashed (``utcp.api_keys``,
sqitch change ``service_keys``), printed once.

A key is ``esk_`` and 43 characters of URL-safe base64 (256 random bits);
the table keeps its SHA-256 (a fast hash is enough: the secret cannot be
guessed, and it is never stored). Operators manage keys (``eventstore keys
add|list|revoke``, as a member of utcp_operator); the service reads the
hashes with its own role, and writes keys (the admin tools ``keys.add`` and
``keys.revoke``) only through the operator DSN it may be given
(``--keys-dsn``). A revoked key keeps its row (and its name) for good.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
import psycopg

from eventstore.connection import map_error
from eventstore.errors import ValidationError
from eventstore.settings import Settings
from eventstore.store import EventStore

__all__ = [
    "ROLES",
    "ApiKey",
    "KeyCache",
    "Role",
    "add_key",
    "at_least",
    "hash_key",
    "list_keys",
    "looks_like_key",
    "revoke_key",
]

Role = Literal["reader", "writer", "admin"]
#: Each role may do what the roles before it may.
ROLES: Final[tuple[Role, ...]] = ("reader", "writer", "admin")
PREFIX: Final = "esk_"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY: Final = re.compile(r"esk_[A-Za-z0-9_-]{43}")

ADD: Final = """
INSERT INTO utcp.api_keys (name, role, key_hash) VALUES (%s, %s, %s)
ON CONFLICT (name) DO NOTHING
RETURNING name, role, created_at, revoked_at"""
LIST: Final = "SELECT name, role, created_at, revoked_at FROM utcp.api_keys ORDER BY name"
REVOKE: Final = """
UPDATE utcp.api_keys SET revoked_at = pg_catalog.now()
 WHERE name = %s AND revoked_at IS NULL
RETURNING name, role, created_at, revoked_at"""
LIST_ONE: Final = "SELECT name FROM utcp.api_keys WHERE name = %s"
LOOKUP: Final = """
SELECT name, role FROM utcp.api_keys WHERE key_hash = %s AND revoked_at IS NULL"""


class ApiKey(msgspec.Struct, frozen=True):
    """A key as listed (never its secret)."""

    name: str
    role: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


def at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


def add_key(dsn: str, name: str, role: str) -> tuple[ApiKey, str]:
    """A new key named ``name``: returns it listed and its secret (show it once)."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            "a key's name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit)",
            field="name",
            operation="keys add",
        )
    if role not in ROLES:
        raise ValidationError(
            f"role must be one of {', '.join(ROLES)}", field="role", operation="keys add"
        )
    secret = PREFIX + secrets.token_urlsafe(32)
    rows = _write(dsn, "keys add", ADD, (name, role, hash_key(secret)))
    if not rows:
        raise ValidationError(
            f"a key named {name!r} exists already (revoked keys keep their names)",
            field="name",
            operation="keys add",
        )
    return ApiKey(*rows[0]), secret


def list_keys(store: EventStore) -> list[ApiKey]:
    return [ApiKey(*row) for row in store.query("keys list", LIST, ())]


def revoke_key(dsn: str, name: str) -> ApiKey:
    rows = _write(dsn, "keys revoke", REVOKE, (name,))
    if not rows:
        known = bool(_write(dsn, "keys revoke", LIST_ONE, (name,)))
        raise ValidationError(
            f"key {name!r} is already revoked" if known else f"no key named {name!r}",
            field="name",
            operation="keys revoke",
        )
    return ApiKey(*rows[0])


def _write(dsn: str, operation: str, query: Any, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One statement in its own transaction on a connection of its own: key
    management is an operator's act outside the log, not a read model's
    query (``EventStore.query`` is read-only)."""
    settings = Settings.from_env()
    try:
        with psycopg.connect(dsn, **settings.connection_kwargs()) as conn:
            return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise map_error(exc, operation) from exc


class KeyCache:
    """Looks keys up by hash, remembering answers for ``ttl`` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[bytes, tuple[float, tuple[str, str] | None]] = {}

    def lookup(self, store: EventStore, key: str) -> tuple[str, str] | None:
        """(name, role) of a valid key, None for an unknown or revoked one."""
        if not looks_like_key(key):
            return None
        digest = hash_key(key)
        now = self._clock()  # before the query: an answer is never trusted past ttl
        if self.ttl > 0:
            with self._lock:
                hit = self._seen.get(digest)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        rows = store.query("authenticate", LOOKUP, (digest,))
        found = (str(rows[0][0]), str(rows[0][1])) if rows else None
        if self.ttl > 0:
            with self._lock:
                if len(self._seen) > 10_000:
                    self._seen.clear()
                self._seen[digest] = (now, found)
        return found

    def forget(self, name: str) -> None:
        """Drop what is remembered of key ``name`` (just revoked here): other
        services' caches still trust it for at most ``ttl`` seconds."""
        with self._lock:
            for digest, (_, found) in list(self._seen.items()):
                if found is not None and found[0] == name:
                    del self._seen[digest]
