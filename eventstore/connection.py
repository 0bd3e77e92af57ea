"""A store's connections: opening (DSN, first connection, schema check,
pool), each unit of work's bounded waits and retries, and turning driver
and pool failures into the store's own errors."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import msgspec
import psycopg
import psycopg_pool
from psycopg import postgres
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg.types.json import set_json_loads

from . import outcomes, sql, watchdog
from .errors import (
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    StorageError,
    StorageUnavailable,
    ValidationError,
    first_line,
)
from .pool import LifoConnectionPool
from .retry import call_deadline, is_transient, run_with_retries
from .settings import Settings, redact, redact_dsn

__all__ = ["DSN_ENV", "Database", "JsonbBytes", "hazard_message", "map_error"]

log = logging.getLogger("eventstore")

R = TypeVar("R")

DSN_ENV: Final = "EVENTSTORE_DSN"
#: The shortest wait a unit of work gets when its call's budget is (nearly)
#: spent: it fails fast, with the error it meets, instead of not trying.
MIN_WAIT: Final = 0.05

_decode_json = msgspec.json.Decoder().decode


class JsonbBytes(bytes):
    """JSON text already encoded by msgspec, sent as a binary jsonb parameter."""

    __slots__ = ()


class _JsonbBytesDumper(Dumper):
    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Buffer) -> Buffer:
        return b"\x01" + bytes(obj)  # jsonb binary format: version 1, then the text


def hazard_message(row: tuple[Any, ...] | None) -> str | None:
    if row is None or not row[2]:
        return None
    return (
        f"stored transaction ids (up to {row[0]}) are ahead of this cluster's ({row[1]}): "
        "the log was restored logically into a new cluster, and new events would sort "
        "before old ones; appends are refused until it is fixed (docs/runbook.md, 'Restores')"
    )


def _redacted_copy(exc: psycopg.Error, dsn: str) -> psycopg.Error:
    """The same kind of error, its message without ``dsn``'s secrets: the
    cause a DSN error is chained to (the driver's own may quote them)."""
    return type(exc)(redact(str(exc), dsn))


class _OrderGuard:
    """Refuses appends while the log's transaction ids are ahead of the
    cluster's (docs/design.md §4, "Restores").

    Checked on every new connection: the counter can only go backwards by
    moving to another cluster, and that always means new connections. The
    append path itself pays nothing for it.
    """

    def __init__(self, round_trip_timeout: float = 60.0) -> None:
        self.hazard: str | None = None
        self.round_trip_timeout = round_trip_timeout

    def check(self, conn: psycopg.Connection[Any]) -> None:
        self.hazard = hazard_message(conn.execute(sql.XID_HAZARD).fetchone())
        if self.hazard:
            log.error("%s", self.hazard)

    def configure(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's configure hook: adapters, then the order check."""
        conn.adapters.register_dumper(JsonbBytes, _JsonbBytesDumper)
        set_json_loads(_decode_json, conn)
        with watchdog.guard(conn, self.round_trip_timeout):
            self.check(conn)


def map_error(
    exc: Exception,
    operation: str,
    *,
    stream_id: str | None = None,
    idempotency_key: str | None = None,
) -> EventStoreError:
    """Translate a driver or pool failure into the store's own error."""
    if isinstance(exc, EventStoreError):
        return exc
    ctx: dict[str, Any] = {
        "operation": operation,
        "stream_id": stream_id,
        "idempotency_key": idempotency_key,
    }
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StorageUnavailable(f"no database connection became available: {exc}", **ctx)
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StorageError("the event store is closed", **ctx)
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    ctx["sqlstate"] = state
    message = first_line(exc)
    if is_transient(exc):
        return StorageUnavailable(f"database unavailable: {message}", **ctx)
    if state in {"42P01", "42883", "3F000"}:
        return SchemaNotDeployed(
            f"the utcp schema is missing or out of date ({message}): run `eventstore db deploy`",
            **ctx,
        )
    if state == "UT002":
        hint = exc.diag.message_hint if isinstance(exc, psycopg.Error) else None
        return LogOrderHazard(f"{message}. {hint}" if hint else message, **ctx)
    if state == "UT003" or (state or "").startswith("23"):
        return IntegrityViolation(message, **ctx)
    if state == "UT004":
        return outcomes.invalid(message, **ctx)
    if state == "UT005":
        return IdempotencyConflict(message, **ctx)
    if (state or "").startswith("22") or isinstance(exc, psycopg.DataError):
        # psycopg.DataError without a sqlstate: refused by the driver before
        # it was sent (a NUL character in a text parameter): the caller's input
        return ValidationError(message, **ctx)
    if state == "42501":
        return StorageError(f"permission denied: {message}", **ctx)
    return StorageError(message, **ctx)


class Database:
    """The pool behind one :class:`EventStore`, with the order guard and
    the business-time fields the database derives. Thread-safe."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        settings: Settings,
        guard: _OrderGuard | None = None,
        time_fields: Mapping[str, str] | None = None,
        *,
        append_group: bool = False,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.guard = guard if guard is not None else _OrderGuard(settings.round_trip_timeout)
        #: Each type's business-time field as the database derives it
        #: (utcp.event_time_fields): registered types must agree with it.
        self.time_fields = time_fields
        #: utcp.append_group() is deployed and ours to call: every append
        #: goes through it (a group of one when alone).
        self.append_group = append_group

    @classmethod
    def open(
        cls,
        dsn: str | None = None,
        settings: Settings | None = None,
    ) -> Database:
        """Connect, check the schema, and open the pool (:meth:`EventStore.open`)."""
        dsn = dsn if dsn is not None else os.environ.get(DSN_ENV)
        if dsn is not None and not isinstance(dsn, str):
            raise ValidationError(
                f"dsn must be a string, got {type(dsn).__name__}", field="dsn", operation="open"
            )
        if settings is not None and not isinstance(settings, Settings):
            raise ValidationError(
                f"settings must be a Settings, got {type(settings).__name__}",
                field="settings",
                operation="open",
            )
        if not dsn:
            raise ValidationError(
                f"no database given: pass dsn= or set {DSN_ENV}", field="dsn", operation="open"
            )
        settings = settings if settings is not None else Settings.from_env()
        malformed: ValidationError | None = None
        try:
            user_options = conninfo_to_dict(dsn).get("options")
        except psycopg.ProgrammingError as exc:
            # Raised outside this block, chained to a redacted copy: libpq
            # quotes the DSN, password and all, in some of these messages.
            malformed = ValidationError(
                f"malformed DSN {redact_dsn(dsn)!r}: {redact(first_line(exc), dsn)}",
                field="dsn",
                operation="open",
            )
            malformed.__cause__ = _redacted_copy(exc, dsn)
        if malformed is not None:
            raise malformed
        # The store's timeouts go after the DSN's own options: later -c wins.
        options = settings.connection_options()
        if user_options:
            options = f"{user_options} {options}"
        kwargs = settings.connection_kwargs()
        kwargs["options"] = options
        # One plain connection first: its error says what is wrong (host,
        # auth, database), where a pool would only say it timed out.
        order_guard = _OrderGuard(settings.round_trip_timeout)
        unavailable: StorageUnavailable | None = None
        try:
            first = psycopg.connect(dsn, **kwargs)
        except psycopg.Error as exc:
            unavailable = StorageUnavailable(
                f"cannot connect to PostgreSQL: {redact(first_line(exc), dsn)}",
                operation="open",
                sqlstate=exc.sqlstate,
            )
            unavailable.__cause__ = _redacted_copy(exc, dsn)
        if unavailable is not None:
            raise unavailable
        with first as conn:
            try:
                with watchdog.guard(conn, settings.round_trip_timeout):
                    cls._check_schema(conn)
                    order_guard.check(conn)
                    time_fields = dict(conn.execute(sql.TIME_FIELDS).fetchall())
                    row = conn.execute(sql.HAS_APPEND_GROUP).fetchone()
                    append_group = bool(row and row[0])
            except psycopg.Error as exc:  # connected: not a connection problem
                raise map_error(exc, "open") from exc
        pool = LifoConnectionPool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.acquire_timeout,
            max_lifetime=settings.max_lifetime,
            max_idle=settings.max_idle,
            kwargs=kwargs,
            configure=order_guard.configure,
            name="eventstore",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=max(settings.connect_timeout, settings.acquire_timeout))
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise StorageUnavailable(
                f"could not open {settings.pool_min_size} connections: {exc}", operation="open"
            ) from exc
        return cls(pool, settings, order_guard, time_fields, append_group=append_group)

    @staticmethod
    def _check_schema(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(sql.SCHEMA_CHECK).fetchone()
        if row is None or not all(row):
            raise SchemaNotDeployed(
                "the utcp schema is not deployed in this database: run `eventstore db deploy`",
                operation="open",
            )

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one unit of work, its waits bounded: the
        pool's by ``acquire_timeout``, the round trips by the watchdog's
        deadline (``Settings.round_trip_timeout``), both by what is left of
        the call's ``retry_timeout``. Past the deadline the connection is
        shut down and discarded (watchdog.DeadlineExceeded, transient)."""
        settings = self.settings
        deadline = call_deadline()
        acquire = settings.acquire_timeout
        if deadline is not None:
            acquire = min(acquire, deadline - time.monotonic())
        with self.pool.connection(timeout=max(acquire, MIN_WAIT)) as conn:
            budget = settings.round_trip_timeout
            if deadline is not None:
                budget = min(budget, deadline - time.monotonic())
            with watchdog.guard(conn, max(budget, MIN_WAIT)):
                yield conn

    @contextmanager
    def raw_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit), without a deadline: for the
        white-box tests of the pool (tests/support/database.py). Not part
        of the public API, which offers EventStore.query instead."""
        with self.pool.connection() as conn:
            yield conn

    def run(
        self,
        operation: str,
        work: Any,
        *,
        stream_id: str | None = None,
        idempotency_key: str | None = None,
        first_attempt: int = 1,
    ) -> Any:
        """``work(attempt)`` with the store's retries (run_with_retries),
        its failure mapped to the store's own error. ``first_attempt`` > 1:
        an earlier attempt already ran elsewhere (an append's in a group)."""

        def warn(exc: Exception) -> None:
            log.warning("%s: transient failure, retrying: %s", operation, first_line(exc))

        try:
            return run_with_retries(self.settings, work, on_retry=warn, first_attempt=first_attempt)
        except Exception as exc:
            mapped = map_error(exc, operation, stream_id=stream_id, idempotency_key=idempotency_key)
            if mapped is exc:
                raise  # already ours, with its own cause
            raise mapped from exc

    def order_hazard(self) -> str | None:
        """Check again (only while refusing): the operator may have fixed it."""

        def work(_: int) -> str | None:
            with self.connection() as conn:
                self.guard.check(conn)
            return self.guard.hazard

        hazard: str | None = self.run("append", work)
        return hazard
