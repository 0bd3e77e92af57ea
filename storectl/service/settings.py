"""What the operator configures for ``eventstore serve``."""

from __future__ import annotations

import ipaddress

import msgspec

from eventstore.errors import ValidationError
from eventstore.settings import Settings

__all__ = ["ServiceSettings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The service's settings (``eventstore serve --help`` names each)."""

    #: The store's DSN: a login role that is a member of utcp_writer (it
    #: appends, reads the log and the read models, and the key hashes).
    dsn: str
    #: A second DSN, a member of utcp_operator, for the admin tools keys.add
    #: and keys.revoke (None: they answer 503; keys are managed with
    #: ``eventstore keys``). Never used for anything else.
    keys_dsn: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    #: The base URL clients reach the service at, for the manual's absolute
    #: URLs (default: http(s)://host:port).
    public_url: str | None = None
    #: No API keys at all: allowed only on a loopback address.
    no_auth: bool = False
    #: Largest request body accepted (bytes): more is 413.
    max_body_bytes: int = 1_048_576
    #: Per-call time limit (seconds): past it the call answers 504.
    request_timeout: float = 30.0
    #: How long a call waits for a database connection before 503.
    db_wait: float = 5.0
    #: Threads running the (synchronous) store's calls at once.
    threads: int = 16
    #: Connections in the store's pool.
    pool_size: int = 10
    #: How long a looked-up key is trusted before it is looked up again
    #: (a revoked key stops working within this time; 0: every call).
    key_cache_seconds: float = 5.0
    #: The Retry-After (seconds) sent with a 503.
    retry_after: int = 2
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    #: Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace: float = 30.0

    def __post_init__(self) -> None:
        if self.no_auth and not is_loopback(self.host):
            raise ValidationError(
                f"--no-auth binds only to a loopback address, not {self.host!r}",
                field="no_auth",
                operation="serve",
            )
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValidationError(
                "TLS needs both a certificate and its key (--tls-cert and --tls-key)",
                field="tls_certfile",
                operation="serve",
            )
        for name in ("max_body_bytes", "threads", "pool_size"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be >= 1", field=name, operation="serve")
        for name in ("request_timeout", "db_wait"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"{name} must be > 0", field=name, operation="serve")

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def store_settings(self) -> Settings:
        """The store's settings: a bounded wait for a connection, retries
        that end well inside the call's time limit."""
        return Settings.from_env(
            pool_min_size=1,
            pool_max_size=self.pool_size,
            acquire_timeout=self.db_wait,
            retry_timeout=max(1.0, min(30.0, self.request_timeout * 0.8)),
            application_name="eventstore-serve",
        )
