"""Connection, pool and retry settings, with production defaults.

Every field can be overridden from the environment as ``EVENTSTORE_<FIELD>``
(``EVENTSTORE_POOL_MAX_SIZE=20``); durations are seconds. A bad value is a
ValidationError naming the setting and the variable; an ``EVENTSTORE_*``
variable nobody reads (a misspelling) gets a :class:`SettingsWarning`, once,
naming the closest known one (docs/settings.md).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

import msgspec

from .errors import ValidationError
from .limits import MAX_BATCH_EVENTS, MAX_EVENT_BYTES

__all__ = [
    "ENV_PREFIX",
    "OTHER_VARIABLES",
    "REDACTED",
    "SECRET_PARAMS",
    "Settings",
    "SettingsWarning",
    "dsn_secrets",
    "redact",
    "redact_dsn",
]

ENV_PREFIX: Final = "EVENTSTORE_"

#: The ``EVENTSTORE_*`` variables that are not Settings fields: read by the
#: store (the DSN), the tools and the tests (docs/settings.md, "Test and
#: tool variables"). A program that reads one more adds it here (and to
#: the docs), or it is warned about as a misspelling.
OTHER_VARIABLES: Final = frozenset(
    {
        "EVENTSTORE_DSN",
        "EVENTSTORE_TEST_DSN",
        "EVENTSTORE_BENCH_DSN",
        "EVENTSTORE_SQITCH_DIR",
        "EVENTSTORE_LOCAL_PORT",
        "EVENTSTORE_LOCAL_PG",
        "EVENTSTORE_LOCAL_PGDATA",
        "EVENTSTORE_PG_BIN",
        "EVENTSTORE_DEFAULT_PORT",
    }
)


class SettingsWarning(UserWarning):
    """An ``EVENTSTORE_*`` variable no setting or tool reads (a misspelling?)."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _warn_unknown(env: Mapping[str, str], fields: tuple[str, ...]) -> None:
    """One SettingsWarning per unknown ``EVENTSTORE_*`` variable per process."""
    known = {_variable(n) for n in fields} | OTHER_VARIABLES
    for variable in env:
        if not variable.startswith(ENV_PREFIX) or variable in known:
            continue
        with _warned_lock:
            if variable in _warned:
                continue
            _warned.add(variable)
        # Compared without the prefix every candidate shares.
        names = sorted(k.removeprefix(ENV_PREFIX) for k in known)
        close = difflib.get_close_matches(variable.removeprefix(ENV_PREFIX), names, n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        warnings.warn(
            f"{variable} is not a variable the event store reads{hint}: it is ignored "
            "(docs/settings.md lists them)",
            SettingsWarning,
            stacklevel=3,
        )


def _kind(default: object) -> tuple[type, ...]:
    """The types a setting with this default takes (an int is a float too)."""
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """How the store talks to PostgreSQL. See docs/settings.md."""

    #: Connections kept open even when idle.
    pool_min_size: int = 2
    #: Hard cap on connections (one per concurrent append or read).
    pool_max_size: int = 10
    #: How long a caller waits for a free connection before PoolTimeout.
    acquire_timeout: float = 10.0
    #: Connections are replaced after this long (jittered by the pool).
    max_lifetime: float = 3600.0
    #: Idle connections above ``pool_min_size`` are closed after this long.
    max_idle: float = 600.0
    #: TCP connect timeout for each new connection.
    connect_timeout: float = 5.0
    #: Server-side cap on one statement (0 disables). Appends are one statement.
    statement_timeout: float = 30.0
    #: A session idle inside a transaction is killed after this long, so it
    #: cannot pin the global readers' horizon (docs/design.md §4, "Stalls").
    idle_in_transaction_session_timeout: float = 60.0
    #: Shown in pg_stat_activity.
    application_name: str = "eventstore"
    #: Client-side deadline on one unit of work's round trips (seconds): past
    #: it the connection is shut down and discarded, whatever the network
    #: does (a silent one included). 0: statement_timeout + 5 s (1 hour when
    #: statement_timeout is 0). A call's whole retry_timeout caps it too.
    network_timeout: float = 0.0
    #: TCP keepalives on every connection: first probe after this many idle
    #: seconds, then every keepalives_interval s, dead after keepalives_count
    #: unanswered probes (a peer that is gone, not one that is silent).
    keepalives_idle: int = 10
    keepalives_interval: int = 5
    keepalives_count: int = 3
    #: Linux TCP_USER_TIMEOUT: a connection whose sent data stays
    #: unacknowledged this long is dropped by the kernel (0 = the system's).
    tcp_user_timeout: float = 30.0
    #: Attempts for one unit of work on transient failures (1 = no retry).
    retry_attempts: int = 5
    #: Total time budget for those attempts, backoff included.
    retry_timeout: float = 30.0
    #: Largest encoded ``data`` + ``metadata`` of one event, in bytes (at
    #: most limits.MAX_EVENT_BYTES, which the database enforces).
    max_event_bytes: int = MAX_EVENT_BYTES
    #: Most events in one append (at most limits.MAX_BATCH_EVENTS).
    max_batch_events: int = MAX_BATCH_EVENTS
    #: LISTEN/NOTIFY channel the store pokes after appends commit (a wake-up
    #: hint for live readers, debounced, never inside an append); "" for none.
    notify_channel: str = "utcp_events"
    #: ``eventstore status`` (and ``needs_operator``): global readers held
    #: back for longer than this by one open transaction need an operator.
    stall_threshold: float = 60.0
    #: Group commit: concurrent appends of this process share one call of
    #: utcp.append_group(), one transaction and one WAL flush (docs/
    #: architecture.md, "Group commit"); a lone writer never waits for one.
    #: False: every append is its own call.
    group_commit: bool = True

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            kind = _kind(_DEFAULTS[name])
            if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
                raise ValidationError(
                    f"invalid setting {name}={value!r}: expected "
                    f"{' or '.join(k.__name__ for k in kind)}, got {type(value).__name__}",
                    field=name,
                    operation="settings",
                )
        checks: list[tuple[str, bool]] = [
            ("pool_min_size", self.pool_min_size >= 0),
            ("pool_max_size", self.pool_max_size >= max(1, self.pool_min_size)),
            ("acquire_timeout", self.acquire_timeout > 0),
            ("max_lifetime", self.max_lifetime > 0),
            ("max_idle", self.max_idle > 0),
            ("connect_timeout", self.connect_timeout > 0),
            ("statement_timeout", self.statement_timeout >= 0),
            ("idle_in_transaction_session_timeout", self.idle_in_transaction_session_timeout >= 0),
            ("network_timeout", self.network_timeout >= 0),
            ("keepalives_idle", self.keepalives_idle >= 1),
            ("keepalives_interval", self.keepalives_interval >= 1),
            ("keepalives_count", self.keepalives_count >= 1),
            ("tcp_user_timeout", self.tcp_user_timeout >= 0),
            ("retry_attempts", self.retry_attempts >= 1),
            ("retry_timeout", self.retry_timeout > 0),
            ("max_event_bytes", 0 < self.max_event_bytes <= MAX_EVENT_BYTES),
            ("max_batch_events", 0 < self.max_batch_events <= MAX_BATCH_EVENTS),
            ("stall_threshold", self.stall_threshold > 0),
        ]
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                why = {
                    "pool_max_size": f" (it must be at least pool_min_size={self.pool_min_size!r})",
                    "max_event_bytes": f" (from 1 to {MAX_EVENT_BYTES}: the database's limit)",
                    "max_batch_events": f" (from 1 to {MAX_BATCH_EVENTS}: the database's limit)",
                }.get(name, "")
                raise ValidationError(
                    f"invalid setting {name}={getattr(self, name)!r}{why}",
                    field=name,
                    operation="settings",
                )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """The class's defaults, then ``defaults`` (a program's own, like the
        CLI's small pool), then the ``EVENTSTORE_*`` variables of
        ``environ`` (default ``os.environ``; empty ones are ignored), then
        ``overrides`` (which win over everything). When ``pool_min_size``
        is raised above a default ``pool_max_size``, the maximum follows it.
        A bad value is a ValidationError naming the setting (and the
        variable it came from); an unknown ``EVENTSTORE_*`` variable, a
        :class:`SettingsWarning`."""
        env = os.environ if environ is None else environ
        fields = cls.__struct_fields__
        _warn_unknown(env, fields)
        sources: dict[str, str] = {}
        raw: dict[str, Any] = {}
        for origin, given in (("defaults", defaults or {}), ("overrides", overrides)):
            for name, value in given.items():
                if name not in fields:
                    raise ValidationError(
                        f"unknown setting {name!r} in {origin}", field=name, operation="settings"
                    )
                raw[name], sources[name] = value, f"{name}={value!r}"
            if origin == "defaults":
                for name in fields:
                    value = env.get(_variable(name))
                    if value is not None and value != "":
                        raw[name], sources[name] = value, f"{_variable(name)}={value!r}"
        from_program = set(overrides) | {n for n in raw if sources[n].startswith(ENV_PREFIX)}
        typed = {name: _convert(name, value, sources[name]) for name, value in raw.items()}
        if "pool_max_size" not in from_program and "pool_min_size" in typed:
            minimum = typed["pool_min_size"]
            ceiling = typed.get("pool_max_size", _DEFAULTS["pool_max_size"])
            if isinstance(minimum, int) and isinstance(ceiling, int) and minimum > ceiling:
                typed["pool_max_size"] = minimum
        try:
            return cls(**typed)
        except ValidationError as exc:
            source = sources.get(exc.field or "")
            if source is None or not source.startswith(ENV_PREFIX):
                raise
            raise ValidationError(
                f"{exc.message} (from {source.partition('=')[0]})",
                field=exc.field,
                operation="settings",
            ) from exc

    def connection_options(self) -> str:
        """libpq ``options``: server settings applied at connect, no round trip."""
        # 0 means "no limit" to PostgreSQL: a positive timeout is at least 1 ms.
        statement_ms = _ms(self.statement_timeout)
        idle_ms = _ms(self.idle_in_transaction_session_timeout)
        return (
            f"-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={idle_ms}"
        )

    @property
    def round_trip_timeout(self) -> float:
        """The client-side deadline of one unit of work (``network_timeout``,
        or what 0 stands for)."""
        if self.network_timeout > 0:
            return self.network_timeout
        if self.statement_timeout > 0:
            return self.statement_timeout + ROUND_TRIP_MARGIN
        return 3600.0

    def connection_kwargs(self, application_name: str | None = None) -> dict[str, Any]:
        """libpq parameters for every connection the project opens: the
        connect timeout, keepalives, TCP_USER_TIMEOUT and the server-side
        timeouts (:meth:`connection_options`), autocommit."""
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self.connect_timeout)),
            "application_name": application_name or self.application_name,
            "options": self.connection_options(),
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": self.keepalives_interval,
            "keepalives_count": self.keepalives_count,
            "tcp_user_timeout": _ms(self.tcp_user_timeout),
        }


#: Each setting's default (its type is the setting's type).
_DEFAULTS: Final[dict[str, Any]] = {f.name: f.default for f in msgspec.structs.fields(Settings)}


def _convert(name: str, value: Any, source: str) -> Any:
    """``value`` (text from the environment, or a program's) as setting
    ``name``'s type; a ValidationError naming the setting and the source."""
    kind = _kind(_DEFAULTS[name])
    target: type = float if float in kind else kind[0]
    try:
        return msgspec.convert(value, target, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationError(
            f"invalid setting {source}: expected {target.__name__}",
            field=name,
            operation="settings",
        ) from exc


#: What ``network_timeout`` 0 adds to statement_timeout (seconds).
ROUND_TRIP_MARGIN: Final = 5.0


def _ms(seconds: float) -> int:
    return 0 if seconds == 0 else max(1, round(seconds * 1000))


# -- secrets in DSNs ----------------------------------------------------------

#: libpq parameters whose values are secrets: never shown in a message, a
#: repr or a log, never put on a command line.
SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})
#: What a secret is shown as.
REDACTED: Final = "***"

_KEYS = "|".join(sorted(SECRET_PARAMS))
# postgresql://user:SECRET@host… (greedy: a stray '@' in the secret is covered too)
_URI_USERINFO = re.compile(r"(?i)(\bpostgres(?:ql)?://[^:/?#@\s]*:)([^/\s]*)(@)")
# …?password=SECRET&… in a URI's query
_URI_QUERY = re.compile(rf"(?i)([?&](?:{_KEYS})=)([^&#\s\"]*)")
# password=SECRET or password = 'SE CRET' in a key=value string
_KEY_VALUE = re.compile(rf"(?i)(?<![\w?&])((?:{_KEYS})\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s']*)")


def _is_uri(dsn: str) -> bool:
    return re.match(r"(?i)\s*postgres(?:ql)?://", dsn) is not None


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every secret parameter's value replaced by ``***``: the
    one way a DSN is shown (also a malformed one)."""
    text = _URI_USERINFO.sub(rf"\g<1>{REDACTED}\g<3>", dsn)
    text = _URI_QUERY.sub(rf"\g<1>{REDACTED}", text)
    if not _is_uri(dsn):
        text = _KEY_VALUE.sub(rf"\g<1>{REDACTED}", text)
    return text


def dsn_secrets(dsn: str) -> set[str]:
    """The secret values in ``dsn``, as written and as decoded (found in the
    text, so also in a DSN libpq cannot parse)."""
    found: set[str] = set()
    if _is_uri(dsn):
        for pattern in (_URI_USERINFO, _URI_QUERY):
            for match in pattern.finditer(dsn):
                found.add(match.group(2))
    for match in _KEY_VALUE.finditer(dsn):
        value = match.group(2)
        found.add(value)
        if value.startswith("'"):
            inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
            found.update({inner, re.sub(r"\\(.)", r"\1", inner)})
    decoded = {unquote(v) for v in found}
    return {v for v in found | decoded if v}


def redact(text: str, dsn: str | None) -> str:
    """``text`` (a driver's message, say) with nothing of ``dsn``'s secrets
    left in it."""
    if not dsn:
        return text
    if dsn in text:
        text = text.replace(dsn, redact_dsn(dsn))
    text = _URI_USERINFO.sub(rf"\g<1>{REDACTED}\g<3>", text)
    text = _URI_QUERY.sub(rf"\g<1>{REDACTED}", text)
    for secret in sorted(dsn_secrets(dsn), key=len, reverse=True):
        if secret != REDACTED:
            text = text.replace(secret, REDACTED)
    return text
