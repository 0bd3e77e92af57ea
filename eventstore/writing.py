"""The write path: an append's retries, its own-write check after a lost
reply, and its outcome (:mod:`eventstore.outcomes`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors

from . import outcomes, sql
from .codec import PreparedAppend, prepare_append
from .connection import Database, JsonbBytes
from .errors import (
    DuplicateEventId,
    EventStoreError,
    LogOrderHazard,
    StorageUnavailable,
    ValidationError,
)
from .events import ANY, AppendResult, EventRegistry, ExpectedVersion, NewEvent, _Expectation
from .limits import MAX_BIGINT
from .notify import Notifier

__all__ = ["Writer"]

#: Concurrent writers racing for one stream's next version (expected_version
#: ANY or STREAM_EXISTS): each lost race means another append went in, so
#: this bounds starvation, not progress.
MAX_STREAM_RACES: Final = 100


class Writer:
    """Appends through ``utcp.append_events()``, one call per append."""

    def __init__(self, db: Database, registry: EventRegistry) -> None:
        self._db = db
        self.registry = registry
        channel = db.settings.notify_channel
        self._notifier = (
            Notifier(lambda: self._notify(channel)) if channel and not db.pool.closed else None
        )

    def _notify(self, channel: str) -> None:
        with self._db.connection() as conn:
            conn.execute(sql.NOTIFY, (channel,))

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.close()

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """The write path of :meth:`EventStore.append`."""
        expected = _expected(expected_version, stream_id, idempotency_key)
        if self._db.guard.hazard and self._db.order_hazard() is not None:
            raise LogOrderHazard(
                self._db.guard.hazard,
                operation="append",
                stream_id=stream_id,
                idempotency_key=idempotency_key,
            )
        prepared = prepare_append(
            stream_id,
            events,
            registry=self.registry,
            idempotency_key=idempotency_key,
            max_event_bytes=self._db.settings.max_event_bytes,
            max_batch_events=self._db.settings.max_batch_events,
            time_fields=self._db.time_fields,
        )
        # Fixed before the first attempt, shared by the retries: it tells a
        # retry its own earlier commit from another call's.
        request_id = uuid.uuid4()
        params = (stream_id, expected, idempotency_key, request_id, JsonbBytes(prepared.payload))

        # Whether an attempt's statement may have committed with nobody
        # knowing: set when the connection is lost after it was sent, cleared
        # when the server (or, without a key, the own-write check) answers.
        in_doubt = False

        def attempt(n: int) -> AppendResult:
            nonlocal in_doubt
            with self._db.connection() as conn:
                # Without a key, a retry first looks for its own events: the
                # previous attempt may have committed before its reply was
                # lost. (With a key, the function itself finds the key and
                # its request id.)
                own = _own_write(conn, n, stream_id, prepared, idempotency_key)
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
                        own = _own_write(conn, n, stream_id, prepared, idempotency_key)
                        if own is not None:
                            return own
                        constraint = exc.diag.constraint_name
                        if constraint == "stored_events_event_id_key":
                            raise outcomes.duplicate_event_id(
                                exc, stream_id, idempotency_key
                            ) from exc
                        if constraint != "stored_events_pkey":
                            raise
                        if expected is not None and expected >= 0:
                            row = conn.execute(sql.STREAM_VERSION, (stream_id,)).fetchone()
                            raise outcomes.wrong_version(
                                int(row[0]) if row else None,
                                stream_id,
                                expected_version,
                                idempotency_key,
                                exc,
                            ) from exc
                        continue  # ANY / STREAM_EXISTS: take the next version
                    except psycopg.Error as exc:
                        if exc.sqlstate == "UT002":  # raised by utcp.append_events()
                            hazard = outcomes.log_order_hazard(exc, stream_id, idempotency_key)
                            self._db.guard.hazard = hazard.message  # refuse until fixed
                            raise hazard from exc
                        if exc.sqlstate == "UT005":
                            raise outcomes.key_conflict(exc, stream_id, idempotency_key) from exc
                        if exc.sqlstate != "UT001":
                            raise
                        own = _own_write(conn, n, stream_id, prepared, idempotency_key)
                        if own is not None:
                            return own
                        raise outcomes.stale_version(
                            exc, stream_id, expected_version, idempotency_key
                        ) from exc
                    assert row is not None
                    return outcomes.result(row, request_id, idempotency_key)
                raise StorageUnavailable(
                    f"lost the race for stream {stream_id!r} {MAX_STREAM_RACES} times in a row",
                    operation="append",
                    stream_id=stream_id,
                    idempotency_key=idempotency_key,
                )

        try:
            result: AppendResult = self._db.run(
                "append", attempt, stream_id=stream_id, idempotency_key=idempotency_key
            )
        except EventStoreError as exc:
            if not in_doubt:
                raise
            raise outcomes.outcome_unknown(stream_id, prepared, idempotency_key, exc) from exc
        if self._notifier is not None and not result.duplicate:
            self._notifier.poke()
        return result


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
        and (not prepared.caller_ids or [(r[4], r[5], r[6]) for r in rows] == prepared.contents())
    )
    if not same:
        raise DuplicateEventId(
            f"{len(rows)} of this batch's {len(prepared.event_ids)} event ids are "
            "already in the log, as other events",
            operation="append",
            stream_id=stream_id,
        )
    return AppendResult(stream_id, rows[0][1], rows[-1][1], tuple(r[2] for r in rows))
