"""The event store: append, read a stream, read the global log."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

import msgspec
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import postgres
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg.types.json import set_json_loads

from . import sql, watchdog
from .codec import PreparedAppend, check_stream_id, prepare_append
from .errors import (
    AppendOutcomeUnknown,
    CheckpointNotInLog,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
    first_line,
)
from .events import (
    ANY,
    AppendResult,
    EventRegistry,
    ExpectedVersion,
    NewEvent,
    StoredEvent,
    _Expectation,
    default_registry,
)
from .notify import Notifier
from .pool import LifoConnectionPool
from .retry import call_deadline, is_transient, run_with_retries
from .settings import Settings, redact, redact_dsn

__all__ = [
    "Anchor",
    "AnchorProblem",
    "ChainProblem",
    "ChainReport",
    "EventStore",
    "StoreStatus",
]

log = logging.getLogger("eventstore")

DSN_ENV: Final = "EVENTSTORE_DSN"
#: Concurrent writers racing for one stream's next version (expected_version
#: ANY or STREAM_EXISTS): each lost race means another append went in, so
#: this bounds starvation, not progress.
MAX_STREAM_RACES: Final = 100
START: Final = ("0", 0)
#: The shortest wait a unit of work gets when its call's budget is (nearly)
#: spent: it fails fast, with the error it meets, instead of not trying.
MIN_WAIT: Final = 0.05

_decode_json = msgspec.json.Decoder().decode


class _JsonbBytes(bytes):
    """JSON text already encoded by msgspec, sent as a binary jsonb parameter."""

    __slots__ = ()


class _JsonbBytesDumper(Dumper):
    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Buffer) -> Buffer:
        return b"\x01" + bytes(obj)  # jsonb binary format: version 1, then the text


def _hazard_message(row: tuple[Any, ...] | None) -> str | None:
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
    cluster's (DESIGN.md §4, "Restores").

    Checked on every new connection: the counter can only go backwards by
    moving to another cluster, and that always means new connections. The
    append path itself pays nothing for it.
    """

    def __init__(self, round_trip_timeout: float = 60.0) -> None:
        self.hazard: str | None = None
        self.round_trip_timeout = round_trip_timeout

    def check(self, conn: psycopg.Connection[Any]) -> None:
        self.hazard = _hazard_message(conn.execute(sql.XID_HAZARD).fetchone())
        if self.hazard:
            log.error("%s", self.hazard)

    def configure(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's configure hook: adapters, then the order check."""
        conn.adapters.register_dumper(_JsonbBytes, _JsonbBytesDumper)
        set_json_loads(_decode_json, conn)
        with watchdog.guard(conn, self.round_trip_timeout):
            self.check(conn)


class ChainProblem(msgspec.Struct, frozen=True):
    stream_id: str
    stream_version: int
    position: int
    problem: str


class Anchor(msgspec.Struct, frozen=True):
    """A digest of the global log up to ``checkpoint`` (:meth:`EventStore.anchor`).

    Publish ``digest`` outside the database: an anchor kept elsewhere shows
    any later change to the events it covers, even by the table's owner.
    """

    anchor_id: int
    checkpoint: str
    events: int
    digest: bytes
    created_at: dt.datetime


class AnchorProblem(msgspec.Struct, frozen=True):
    anchor_id: int
    checkpoint: str
    problem: str


class ChainReport(msgspec.Struct, frozen=True):
    """Result of :meth:`EventStore.verify_chain`."""

    events_checked: int
    streams_checked: int
    problems: tuple[ChainProblem, ...]
    anchors_checked: int = 0
    anchor_problems: tuple[AnchorProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.anchor_problems


class StoreStatus(msgspec.Struct, frozen=True):
    """What an operator needs to see (``eventstore status``)."""

    events: int
    streams: int
    last_position: int | None
    last_event_at: Any
    #: Age of the oldest transaction in the cluster that holds back the
    #: global readers' horizon (DESIGN.md §4, "Stalls"), and its backend pid
    #: (None for a prepared transaction). The age is None when the schema's
    #: owner may not see other roles' sessions (docs/runbook.md, "Stalls").
    oldest_transaction_seconds: float | None
    oldest_transaction_pid: int | None
    #: Committed events that readers cannot see yet because an older
    #: transaction is still running.
    events_behind_horizon: int
    #: Set when stored transaction ids are ahead of the cluster (a logical
    #: restore): appends are refused until it is fixed.
    xid_hazard: str | None
    #: The oldest transaction's role, application_name and state (never its
    #: query), whichever role runs status (``utcp.oldest_transaction()``).
    oldest_transaction_role: str | None = None
    oldest_transaction_application: str | None = None
    oldest_transaction_state: str | None = None


#: How long :meth:`EventStore.anchor` waits for another session's lock on
#: the anchors by default, and at most (seconds).
DEFAULT_ANCHOR_LOCK_TIMEOUT: Final = 10.0
MAX_ANCHOR_LOCK_TIMEOUT: Final = 3600.0

#: The largest bigint: versions, positions and limits beyond it are refused
#: here (PostgreSQL would not find a function taking a numeric).
MAX_BIGINT: Final = 2**63 - 1


def _parse_checkpoint(after: str | None) -> tuple[str, int]:
    if after is None:
        return START
    if isinstance(after, str):
        tx, sep, pos = after.partition("/")
        # ASCII digits only ('²'.isdigit() is true), within xid8 and bigint.
        if (
            sep
            and tx.isascii()
            and tx.isdigit()
            and pos.isascii()
            and pos.isdigit()
            and int(tx) < 2**64
            and int(pos) <= MAX_BIGINT
        ):
            # Decimal, as written: xid8 input would read a leading 0 as octal.
            return str(int(tx)), int(pos)
    raise ValidationError(
        f"malformed checkpoint {after!r}: pass a StoredEvent.checkpoint",
        field="after",
        operation="read_all",
    )


def _checkpoint_not_in_log(checkpoint: str) -> CheckpointNotInLog:
    return CheckpointNotInLog(
        f"checkpoint {checkpoint} names no event in this log: the log was restored to a "
        "point before it (a point-in-time recovery, an older backup or dump), so what the "
        "reader saw after the restore point is gone and paging on would miss events. "
        "Rebuild a projection from the log with `eventstore project rebuild`; start another "
        "reader again from the start or from a checkpoint that is in this log "
        "(docs/runbook.md, 'Restores')",
        checkpoint=checkpoint,
        operation="read_all",
    )


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
        # utcp.append_events() names the field first: "events[2].data.x: ..."
        field, sep, text = message.partition(": ")
        if sep and " " not in field:
            return ValidationError(f"{field}: {text}", field=field, **ctx)
        return ValidationError(message, **ctx)
    if state == "UT005":
        return IdempotencyConflict(message, **ctx)
    if (state or "").startswith("22"):
        return ValidationError(message, **ctx)
    if state == "42501":
        return StorageError(f"permission denied: {message}", **ctx)
    return StorageError(message, **ctx)


class EventStore:
    """The audit log. Open with :meth:`open`; use as a context manager.

    Thread-safe: one store serves many threads through its pool.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        settings: Settings,
        registry: EventRegistry,
        guard: _OrderGuard | None = None,
        time_fields: Mapping[str, str] | None = None,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self.registry = registry
        #: Each type's business-time field as the database derives it
        #: (utcp.event_time_fields): registered types must agree with it.
        self._time_fields = time_fields
        self._guard = guard if guard is not None else _OrderGuard(settings.round_trip_timeout)
        channel = settings.notify_channel
        self._notifier = (
            Notifier(lambda: self._notify(channel)) if channel and not pool.closed else None
        )

    def _notify(self, channel: str) -> None:
        with self._connection() as conn:
            conn.execute(sql.NOTIFY, (channel,))

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        dsn: str | None = None,
        settings: Settings | None = None,
        *,
        registry: EventRegistry | None = None,
    ) -> EventStore:
        """Connect, check the schema, and open the pool (``wait=True``: a
        wrong DSN or a missing schema fails here, not at the first append).

        ``dsn`` defaults to the ``EVENTSTORE_DSN`` environment variable;
        ``settings`` to :meth:`Settings.from_env`.
        """
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
        registry = registry if registry is not None else default_registry
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
        return cls(pool, settings, registry, order_guard, time_fields)

    @staticmethod
    def _check_schema(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(sql.SCHEMA_CHECK).fetchone()
        if row is None or not all(row):
            raise SchemaNotDeployed(
                "the utcp schema is not deployed in this database: run `eventstore db deploy`",
                operation="open",
            )

    def close(self) -> None:
        """Close every connection. Idempotent."""
        if self._notifier is not None:
            self._notifier.close()
        self._pool.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
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
        with self._pool.connection(timeout=max(acquire, MIN_WAIT)) as conn:
            budget = settings.round_trip_timeout
            if deadline is not None:
                budget = min(budget, deadline - time.monotonic())
            with watchdog.guard(conn, max(budget, MIN_WAIT)):
                yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit), for callers building on the
        store (projections, tests). Prefer the methods below."""
        with self._pool.connection() as conn:
            yield conn

    def _run(
        self,
        operation: str,
        work: Any,
        *,
        stream_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        def warn(exc: Exception) -> None:
            log.warning("%s: transient failure, retrying: %s", operation, first_line(exc))

        try:
            return run_with_retries(self.settings, work, on_retry=warn)
        except Exception as exc:
            mapped = map_error(exc, operation, stream_id=stream_id, idempotency_key=idempotency_key)
            if mapped is exc:
                raise  # already ours, with its own cause
            raise mapped from exc

    # -- writing ------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream_id`` in one transaction: all or nothing.

        ``expected_version``: :data:`ANY`, :data:`NO_STREAM`,
        :data:`STREAM_EXISTS`, or an int n, "the stream is at version n now"
        (0 is NO_STREAM). With ``idempotency_key``, a repeat of the same
        request returns the first result with ``duplicate=True`` and writes
        nothing; the same key with a different request raises
        :class:`IdempotencyConflict`.
        """
        expected = self._expected(expected_version, stream_id, idempotency_key)
        if self._guard.hazard and self._order_hazard() is not None:
            raise LogOrderHazard(
                self._guard.hazard,
                operation="append",
                stream_id=stream_id,
                idempotency_key=idempotency_key,
            )
        prepared = prepare_append(
            stream_id,
            events,
            registry=self.registry,
            idempotency_key=idempotency_key,
            max_event_bytes=self.settings.max_event_bytes,
            max_batch_events=self.settings.max_batch_events,
            time_fields=self._time_fields,
        )
        # Fixed before the first attempt, shared by the retries: it tells a
        # retry its own earlier commit from another call's.
        request_id = uuid.uuid4()
        params = (stream_id, expected, idempotency_key, request_id, _JsonbBytes(prepared.payload))

        # Whether an attempt's statement may have committed with nobody
        # knowing: set when the connection is lost after it was sent, cleared
        # when the server (or, without a key, the own-write check) answers.
        in_doubt = False

        def attempt(n: int) -> AppendResult:
            nonlocal in_doubt
            with self._connection() as conn:
                # Without a key, a retry first looks for its own events: the
                # previous attempt may have committed before its reply was
                # lost. (With a key, the function itself finds the key and
                # its request id.)
                own = self._own_write(conn, n, stream_id, prepared, idempotency_key)
                if own is not None:
                    return own
                if idempotency_key is None:
                    in_doubt = False  # looked: the earlier attempts wrote nothing
                for _ in range(MAX_STREAM_RACES):
                    try:
                        # Text results: psycopg loads this one row (an int8[]
                        # among its columns) faster as text than as binary.
                        try:
                            row = conn.execute(sql.APPEND, params).fetchone()
                        except psycopg.Error as exc:
                            # The connection broke with the statement sent:
                            # no answer, and the server may have committed.
                            # An answer (a SQLSTATE) settles it.
                            in_doubt = exc.sqlstate is None and conn.closed
                            raise
                        in_doubt = False
                    except pg_errors.UniqueViolation as exc:
                        own = self._own_write(conn, n, stream_id, prepared, idempotency_key)
                        if own is not None:
                            return own
                        constraint = exc.diag.constraint_name
                        if constraint == "stored_events_event_id_key":
                            raise DuplicateEventId(
                                f"an event id of this batch is already in the log: "
                                f"{exc.diag.message_detail or first_line(exc)}",
                                operation="append",
                                stream_id=stream_id,
                                idempotency_key=idempotency_key,
                                sqlstate=exc.sqlstate,
                            ) from exc
                        if constraint != "stored_events_pkey":
                            raise
                        if expected is not None and expected >= 0:
                            raise self._wrong_version(
                                conn, stream_id, expected_version, idempotency_key, exc
                            ) from exc
                        continue  # ANY / STREAM_EXISTS: take the next version
                    except psycopg.Error as exc:
                        if exc.sqlstate == "UT002":  # raised by utcp.append_events()
                            raise self._log_order_hazard(exc, stream_id, idempotency_key) from exc
                        if exc.sqlstate == "UT005":
                            raise self._key_conflict(exc, stream_id, idempotency_key) from exc
                        if exc.sqlstate != "UT001":
                            raise
                        own = self._own_write(conn, n, stream_id, prepared, idempotency_key)
                        if own is not None:
                            return own
                        actual = int(exc.diag.message_detail or -1)
                        raise WrongExpectedVersion(
                            f"stream {stream_id!r} is at version {actual}, "
                            f"not {expected_version!r}",
                            expected=expected_version,
                            actual=actual,
                            operation="append",
                            stream_id=stream_id,
                            idempotency_key=idempotency_key,
                            sqlstate=exc.sqlstate,
                        ) from exc
                    assert row is not None
                    return self._result(row, request_id, idempotency_key)
                raise StorageUnavailable(
                    f"lost the race for stream {stream_id!r} {MAX_STREAM_RACES} times in a row",
                    operation="append",
                    stream_id=stream_id,
                    idempotency_key=idempotency_key,
                )

        try:
            result: AppendResult = self._run(
                "append", attempt, stream_id=stream_id, idempotency_key=idempotency_key
            )
        except EventStoreError as exc:
            if not in_doubt:
                raise
            raise self._outcome_unknown(stream_id, prepared, idempotency_key, exc) from exc
        if self._notifier is not None and not result.duplicate:
            self._notifier.poke()
        return result

    def _outcome_unknown(
        self,
        stream_id: str,
        prepared: PreparedAppend,
        key: str | None,
        exc: EventStoreError,
    ) -> AppendOutcomeUnknown:
        ids = prepared.event_ids
        shown = ", ".join(str(i) for i in ids[:3]) + (", …" if len(ids) > 3 else "")
        how = (
            f"repeat the call with the same idempotency key {key!r} (always safe: it writes "
            "once, and returns the first result with duplicate=True if it was written)"
            if key is not None
            else "look for its event ids in the stream (read_stream) before appending again: "
            "a repeat without an idempotency key could write the events twice"
        )
        return AppendOutcomeUnknown(
            f"the append of {len(ids)} event(s) to {stream_id!r} may or may not have been "
            f"written: the connection was lost after it was sent, and the store could not "
            f"find out within the retry budget ({exc.message}). Event ids: {shown}. To "
            f"resolve it, {how}",
            event_ids=ids,
            operation="append",
            stream_id=stream_id,
            idempotency_key=key,
            sqlstate=exc.sqlstate,
        )

    def _order_hazard(self) -> str | None:
        """Check again (only while refusing): the operator may have fixed it."""

        def work(_: int) -> str | None:
            with self._connection() as conn:
                self._guard.check(conn)
            return self._guard.hazard

        hazard: str | None = self._run("append", work)
        return hazard

    @staticmethod
    def _expected(expected_version: ExpectedVersion, stream_id: str, key: str | None) -> int | None:
        if isinstance(expected_version, _Expectation):
            return expected_version.sql_value
        if (
            isinstance(expected_version, int)
            and not isinstance(expected_version, bool)
            and 0 <= expected_version <= MAX_BIGINT
        ):
            return expected_version
        raise ValidationError(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int from 0 to "
            f"{MAX_BIGINT}, got {expected_version!r}",
            field="expected_version",
            operation="append",
            stream_id=stream_id if isinstance(stream_id, str) else None,
            idempotency_key=key,
        )

    @staticmethod
    def _key_conflict(exc: psycopg.Error, stream_id: str, key: str | None) -> IdempotencyConflict:
        """UT005: the database found the key used for another request (its
        fingerprint, computed there from the stored events, differs)."""
        return IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different request "
            "(another stream or other events); nothing was written",
            operation="append",
            stream_id=stream_id,
            idempotency_key=key,
            sqlstate=exc.sqlstate,
        )

    @staticmethod
    def _result(
        row: tuple[Any, ...], request_id: uuid.UUID, key: str | None = None
    ) -> AppendResult:
        """A row of utcp.append_events(): 'w' written now, 'k' the key's
        earlier result (the database has checked it was this very request)."""
        outcome, stored_stream, first, last, positions, stored_request = row
        if outcome == "k" and (positions is None or len(positions) != last - first + 1):
            # The key outlived its events: someone removed them from the log.
            raise IntegrityViolation(
                f"idempotency key recorded {stored_stream!r} v{first}..v{last}, but "
                f"{last - first + 1 - len(positions or ())} of those events are gone from the "
                "log: it was tampered with (run `eventstore verify`); nothing was written",
                operation="append",
                stream_id=stored_stream,
                idempotency_key=key,
            )
        # A key holding this call's request id was written by this call's
        # own earlier attempt: report the write, once, not a duplicate.
        duplicate = outcome == "k" and stored_request != request_id
        return AppendResult(stored_stream, first, last, tuple(positions), duplicate)

    @staticmethod
    def _own_write(
        conn: psycopg.Connection[Any],
        attempt: int,
        stream_id: str,
        prepared: PreparedAppend,
        key: str | None,
    ) -> AppendResult | None:
        """On a retry without a key: this batch, if the previous attempt
        committed it. Generated ids are this call's alone; ids the caller
        chose count only if the stored events are this batch, to the letter."""
        if attempt == 1 or key is not None:
            return None
        rows = conn.execute(sql.EVENTS_BY_ID, (list(prepared.event_ids),)).fetchall()
        if not rows:
            return None
        same = (
            len(rows) == len(prepared.event_ids)
            and all(r[0] == stream_id for r in rows)
            and [r[3] for r in rows] == list(prepared.event_ids)
            and (
                not prepared.caller_ids or [(r[4], r[5], r[6]) for r in rows] == prepared.contents()
            )
        )
        if not same:
            raise DuplicateEventId(
                f"{len(rows)} of this batch's {len(prepared.event_ids)} event ids are "
                "already in the log, as other events",
                operation="append",
                stream_id=stream_id,
            )
        return AppendResult(stream_id, rows[0][1], rows[-1][1], tuple(r[2] for r in rows))

    def _log_order_hazard(
        self, exc: psycopg.Error, stream_id: str, key: str | None
    ) -> LogOrderHazard:
        message = first_line(exc)
        if exc.diag.message_hint:
            message = f"{message}. {exc.diag.message_hint}"
        self._guard.hazard = message  # refuse every append until it is fixed
        return LogOrderHazard(
            message,
            operation="append",
            stream_id=stream_id,
            idempotency_key=key,
            sqlstate=exc.sqlstate,
        )

    def _wrong_version(
        self,
        conn: psycopg.Connection[Any],
        stream_id: str,
        expected: ExpectedVersion,
        key: str | None,
        cause: Exception,
    ) -> WrongExpectedVersion:
        row = conn.execute(sql.STREAM_VERSION, (stream_id,)).fetchone()
        actual = int(row[0]) if row else None
        return WrongExpectedVersion(
            f"stream {stream_id!r} moved on while appending: it is at version {actual}, "
            f"not {expected!r}",
            expected=expected,
            actual=actual,
            operation="append",
            stream_id=stream_id,
            idempotency_key=key,
            sqlstate=getattr(cause, "sqlstate", None),
        )

    # -- reading ------------------------------------------------------------

    def read_stream(
        self, stream_id: str, *, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """The events of one stream, from ``from_version`` on, in version order."""
        check_stream_id(stream_id, "read_stream")
        if (
            not isinstance(from_version, int)
            or isinstance(from_version, bool)
            or not 1 <= from_version <= MAX_BIGINT
        ):
            raise ValidationError(
                f"from_version must be an int from 1 to {MAX_BIGINT}",
                field="from_version",
                operation="read_stream",
            )
        self._check_limit(limit, "read_stream", allow_none=True)
        return self._fetch_events(
            "read_stream", sql.READ_STREAM, (stream_id, from_version, limit), stream_id=stream_id
        )

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it does not exist)."""
        check_stream_id(stream_id, "stream_version")

        def work(_: int) -> int:
            with self._connection() as conn:
                row = conn.execute(sql.STREAM_VERSION, (stream_id,)).fetchone()
                return int(row[0]) if row else 0

        version: int = self._run("stream_version", work, stream_id=stream_id)
        return version

    def read_all(
        self,
        *,
        after: str | None = None,
        limit: int = 1000,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        """The next page of the global log after checkpoint ``after``.

        Every committed event exactly once, in one order that is the same
        for every reader, and never behind a checkpoint already handed out,
        however writers' commits interleave (DESIGN.md §4). An empty page
        means "nothing more committed yet".
        """
        tx, pos = _parse_checkpoint(after)
        self._check_limit(limit, "read_all")
        # The page starts at the checkpoint's own event (sql.READ_ALL): one
        # more row, dropped here, that proves the checkpoint is in the log.
        fetch = min(limit + 1, MAX_BIGINT)
        head = f"{tx}/{pos}"  # the checkpoint's event, as the page shows it
        query: str
        params: tuple[Any, ...]
        if types is None:
            query, params = sql.READ_ALL, (tx, pos, fetch)
        elif isinstance(types, str) or not all(isinstance(t, str) for t in types):
            raise ValidationError(
                "types must be a sequence of type names", field="types", operation="read_all"
            )
        else:
            query, params = sql.READ_ALL_TYPES, (tx, pos, list(types), fetch)

        def work(_: int) -> list[StoredEvent]:
            with self._connection() as conn:
                rows = conn.cursor(binary=True).execute(query, params).fetchall()
                if int(tx) == 0 and pos == 0:  # the start of the log (START)
                    return [StoredEvent(*row) for row in rows[:limit]]
                if rows and rows[0][1] == head:
                    return [StoredEvent(*row) for row in rows[1:]]
                probe = conn.execute(sql.CHECKPOINT_PROBE, {"tx": tx, "pos": pos}).fetchone()
            if probe is not None and (probe[0] or probe[1]):
                # In the log but not visible yet (or not replayed yet, on a
                # standby): nothing to read after it for now.
                return []
            raise _checkpoint_not_in_log(head)

        events: list[StoredEvent] = self._run("read_all", work)
        return events

    def find_events(
        self,
        *,
        type: str | None = None,
        symbol: str | None = None,
        category: str | None = None,
        stream_id: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events by type, symbol, stream category or stream, with business
        time (``occurred_at``) in ``[since, until)``, in that time order.
        Served by the log's indexes."""
        self._check_limit(limit, "find_events")
        query = sql.find_events(
            type=type is not None,
            symbol=symbol is not None,
            category=category is not None,
            stream_id=stream_id is not None,
            since=since is not None,
            until=until is not None,
        )
        params = {
            "type": type,
            "symbol": symbol,
            "category": category,
            "stream_id": stream_id,
            "since": since,
            "until": until,
            "limit": limit,
        }
        return self._fetch_events("find_events", query, params)

    def query(self, operation: str, query: Any, params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, with the store's retries and errors
        (for read models built on the store, like the adapter's)."""

        def work(_: int) -> list[tuple[Any, ...]]:
            with self._connection() as conn:
                return conn.execute(query, params).fetchall()

        rows: list[tuple[Any, ...]] = self._run(operation, work)
        return rows

    @staticmethod
    def _check_limit(limit: object, operation: str, *, allow_none: bool = False) -> None:
        if limit is None and allow_none:
            return
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BIGINT:
            raise ValidationError(
                f"limit must be an int from 1 to {MAX_BIGINT}", field="limit", operation=operation
            )

    def _fetch_events(
        self, operation: str, query: Any, params: Any, *, stream_id: str | None = None
    ) -> list[StoredEvent]:
        def work(_: int) -> list[StoredEvent]:
            with self._connection() as conn:
                cur = conn.cursor(binary=True)
                rows = cur.execute(query, params).fetchall()
            return [StoredEvent(*row) for row in rows]

        events: list[StoredEvent] = self._run(operation, work, stream_id=stream_id)
        return events

    # -- operations ---------------------------------------------------------

    def verify_chain(self, stream_id: str | None = None, *, limit: int = 100) -> ChainReport:
        """Recompute every hash and check every stream's chain, and (for the
        whole log) every anchor: a changed, removed or re-ordered event shows
        up as a problem. A stream's newest events are covered by the anchors
        taken after them (:meth:`anchor`)."""
        if stream_id is not None:
            check_stream_id(stream_id, "verify_chain")
        self._check_limit(limit, "verify_chain")
        params = {"stream_id": stream_id, "limit": limit}

        def work(_: int) -> ChainReport:
            anchors: tuple[AnchorProblem, ...] = ()
            anchors_checked = 0
            with self._connection() as conn:
                problems = conn.execute(sql.VERIFY_CHAIN, params).fetchall()
                counts = conn.execute(sql.VERIFY_COUNT, params).fetchone()
                if stream_id is None:
                    rows = conn.execute(sql.VERIFY_ANCHORS, params).fetchall()
                    anchors = tuple(AnchorProblem(*r) for r in rows)
                    counted = conn.execute(sql.ANCHOR_COUNT).fetchone()
                    anchors_checked = counted[0] if counted else 0
            assert counts is not None
            return ChainReport(
                events_checked=counts[0],
                streams_checked=counts[1],
                problems=tuple(ChainProblem(*p) for p in problems),
                anchors_checked=anchors_checked,
                anchor_problems=anchors,
            )

        report: ChainReport = self._run("verify_chain", work, stream_id=stream_id)
        return report

    def anchor(self, *, lock_timeout: float = DEFAULT_ANCHOR_LOCK_TIMEOUT) -> Anchor | None:
        """Take an anchor over every event readers can see now (None while
        the log is empty; the latest anchor when nothing new was committed).

        An operator's act: the store must be connected as a member of
        ``utcp_operator`` (or a superuser). Anchors are taken one at a time;
        if another session holds the anchors' lock for longer than
        ``lock_timeout`` seconds, this fails with a :class:`StorageError`
        naming that session.
        """
        if (
            not isinstance(lock_timeout, (int, float))
            or isinstance(lock_timeout, bool)
            or not 0 < lock_timeout <= MAX_ANCHOR_LOCK_TIMEOUT
        ):
            raise ValidationError(
                f"lock_timeout must be a number of seconds in (0, {MAX_ANCHOR_LOCK_TIMEOUT}]",
                field="lock_timeout",
                operation="anchor",
            )
        wait = f"{max(1, round(lock_timeout * 1000))}ms"

        def work(_: int) -> Anchor | None:
            with self._connection() as conn, conn.transaction():
                # A snapshot older than the latest anchor would chain onto a
                # stale one: the database refuses anything but READ COMMITTED.
                conn.execute(sql.ANCHOR_ISOLATION)
                conn.execute(sql.SET_LOCK_TIMEOUT, (wait,))
                row = conn.execute(sql.ANCHOR).fetchone()
            return None if row is None else Anchor(*row)

        try:
            anchor: Anchor | None = self._run("anchor", work)
        except StorageError as exc:
            if exc.sqlstate != "42501":
                raise
            cause = exc.__cause__
            raise StorageError(
                "anchors are taken by operators: connect as a member of utcp_operator "
                f"({first_line(cause) if cause is not None else exc.message})",
                operation="anchor",
                sqlstate=exc.sqlstate,
            ) from exc
        return anchor

    def status(self) -> StoreStatus:
        """Counts, the oldest running transaction, and the restore hazard."""

        def work(_: int) -> StoreStatus:
            with self._connection() as conn:
                row = conn.execute(sql.STATUS).fetchone()
                oldest = conn.execute(sql.OLDEST_TRANSACTION).fetchone()
                hazard = conn.execute(sql.XID_HAZARD).fetchone()
            assert row is not None
            pid, role, application, state, age = oldest or (None,) * 5
            message = _hazard_message(hazard)
            return StoreStatus(
                events=row[0],
                last_position=row[1],
                streams=row[2],
                last_event_at=row[3],
                oldest_transaction_seconds=age,
                oldest_transaction_pid=pid,
                events_behind_horizon=row[4],
                xid_hazard=message,
                oldest_transaction_role=role,
                oldest_transaction_application=application,
                oldest_transaction_state=state,
            )

        status: StoreStatus = self._run("status", work)
        return status
