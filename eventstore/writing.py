"""The write path: an append's group (:mod:`eventstore.group_commit`), its
retries, its own-write check after a lost reply, and its outcome
(:mod:`eventstore.outcomes`)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors

from . import outcomes, sql
from .codec import prepare_append
from .connection import Database, JsonbBytes, map_error
from .errors import (
    DuplicateEventId,
    EventStoreError,
    LogOrderHazard,
    StorageUnavailable,
    ValidationError,
    first_line,
)
from .events import ANY, AppendResult, EventRegistry, ExpectedVersion, NewEvent, _Expectation
from .group_commit import GroupCommitter, GroupFailed
from .limits import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BIGINT
from .notify import Notifier
from .outcomes import AppendRequest, Outcome
from .retry import call_budget, is_transient

__all__ = ["Writer"]

log = logging.getLogger("eventstore")

#: Group commit: groups in flight at once. One more than one lets the next
#: group run while the previous one waits for its WAL flush (PostgreSQL
#: shares a flush between concurrent commits anyway): measured on 2 cores
#: with 8 writer threads, 1 → 396, 2 → 456, 3 → 488 events/s (bench/
#: group_commit.py); 2 keeps the groups larger (2.8 requests, against 2.1).
GROUPS_IN_FLIGHT: Final = 2
#: Appends of more events than this go alone, never in a group: their own
#: statement's cost is spread over their events already, and in a group
#: they would hold up the small appends sharing it and serialise work that
#: runs in parallel alone (8 writers of 100-event appends: 8198 events/s
#: alone, 5007-6201 in groups).
GROUP_MAX_REQUEST_EVENTS: Final = 10

#: Concurrent writers racing for one stream's next version (expected_version
#: ANY or STREAM_EXISTS): each lost race means another append went in, so
#: this bounds starvation, not progress.
MAX_STREAM_RACES: Final = 100


class Writer:
    """Appends through ``utcp.append_group()`` (sqitch/deploy/append_group.sql):
    in groups shared by concurrent callers (``Settings.group_commit``), and
    alone (a group of one) for retries and when grouping is off. On a schema
    without it, through ``utcp.append_events()``, one call per append."""

    def __init__(self, db: Database, registry: EventRegistry) -> None:
        self._db = db
        self.registry = registry
        channel = db.settings.notify_channel
        self._notifier = (
            Notifier(lambda: self._notify(channel)) if channel and not db.pool.closed else None
        )
        #: The group committer (None: every append is its own call).
        self.groups: GroupCommitter[AppendRequest, Outcome] | None = None
        if db.settings.group_commit and db.append_group:
            self.groups = GroupCommitter(
                self._send_group,
                max_events=MAX_BATCH_EVENTS,
                max_bytes=MAX_BATCH_BYTES,
                max_groups=GROUPS_IN_FLIGHT,
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
        with call_budget(self._db.settings) as deadline:
            # Fixed before the first attempt, shared by the retries: the
            # request id tells a retry its own earlier commit from another
            # call's.
            request = AppendRequest(
                stream_id,
                expected,
                expected_version,
                idempotency_key,
                uuid.uuid4(),
                prepared,
                deadline,
            )
            if self.groups is None or request.events > GROUP_MAX_REQUEST_EVENTS:
                result = self._direct(request)
            else:
                try:
                    outcome = self.groups.submit(request)
                except GroupFailed as failed:
                    result = self._after_group(request, failed)
                else:
                    # (the group's leader has poked the notifier)
                    return outcomes.settle(request, outcome)
        if self._notifier is not None and not result.duplicate:
            self._notifier.poke()
        return result

    # -- groups ------------------------------------------------------------------

    def _send_group(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        """One utcp.append_group() call for ``requests`` (the group
        committer's ``send``, run by the group's leader within its own
        budget): their outcomes, or GroupFailed."""
        sent = False
        try:
            with self._db.connection() as conn:
                sent = True
                try:
                    rows = conn.execute(sql.APPEND_GROUP, _group_params(requests)).fetchall()
                except psycopg.Error as exc:
                    # The connection broke with the statement sent: no
                    # answer, and the server may have committed.
                    lost = exc.sqlstate is None and conn.closed
                    raise GroupFailed(exc, sent=True, in_doubt=lost) from exc
            result = outcomes.read_group(rows, len(requests))
        except GroupFailed:
            raise
        except Exception as exc:
            # Before the statement: nothing sent. After its answer (the
            # rows unreadable): committed, for all we know.
            raise GroupFailed(exc, sent=sent, in_doubt=sent) from exc
        if self._notifier is not None and any(o.written for o in result):
            self._notifier.poke()  # once per group, after its commit
        return result

    def _after_group(self, request: AppendRequest, failed: GroupFailed) -> AppendResult:
        """The group this request went in failed as a whole (or the request
        ran out of time waiting): go on alone, by the direct path's rules.

        A transient failure (the connection lost) counts as the first
        attempt: the rest of the retry budget follows, a request in doubt
        first looking for its own write (with a key, the key itself
        answers). Any other failure (an error no check foresaw, such as a
        concurrent transaction writing one of the group's event ids) rolled
        the whole group back: each request is sent again alone, from its
        first attempt, and gets its own outcome."""
        cause = failed.cause
        stream, key = request.stream_id, request.key
        if isinstance(cause, psycopg.Error) and cause.sqlstate == "UT002":
            hazard = outcomes.log_order_hazard(cause, stream, key)
            self._db.guard.hazard = hazard.message  # refuse until fixed
            raise hazard from cause
        # (A leader interrupted by KeyboardInterrupt and the like raises it
        # itself; its followers get it as a failure in doubt.)
        retrying = (
            cause is None
            or failed.in_doubt
            or not isinstance(cause, Exception)
            or is_transient(cause)
        )
        if not retrying:
            constraint = cause.diag.constraint_name if isinstance(cause, psycopg.Error) else None
            if failed.group_size == 1 and isinstance(cause, Exception):
                # Alone in its group: sent alone again, it would meet the
                # same error (unless it lost a race for the stream's next
                # version to a utcp.append_events() caller: then it goes on).
                if constraint == "stored_events_event_id_key":
                    assert isinstance(cause, psycopg.Error)
                    raise outcomes.duplicate_event_id(cause, stream, key) from cause
                if constraint != "stored_events_pkey":
                    mapped = map_error(cause, "append", stream_id=stream, idempotency_key=key)
                    if mapped is cause:
                        raise mapped
                    raise mapped from cause
            else:
                log.warning(
                    "append: its group of %d failed (%s), sending it alone",
                    failed.group_size,
                    first_line(cause) if cause is not None else "no answer",
                )
            return self._direct(request)
        out_of_time = time.monotonic() >= request.deadline
        if out_of_time or self._db.settings.retry_attempts < 2:
            if not isinstance(cause, Exception):
                error: EventStoreError = StorageUnavailable(
                    "the append's group did not answer within the retry budget"
                    if failed.sent
                    else "no group took the append within the retry budget",
                    operation="append",
                    stream_id=stream,
                    idempotency_key=key,
                )
            else:
                error = map_error(cause, "append", stream_id=stream, idempotency_key=key)
            if failed.in_doubt:
                raise outcomes.outcome_unknown(stream, request.prepared, key, error) from (
                    cause if cause is not None else error
                )
            if error is cause or cause is None:
                raise error
            raise error from cause
        log.warning(
            "append: its group of %d failed (%s), retrying alone",
            failed.group_size,
            first_line(cause) if cause is not None else "no answer in time",
        )
        return self._direct(request, first_attempt=2, in_doubt=failed.in_doubt)

    # -- one request alone -------------------------------------------------------

    def _direct(
        self, request: AppendRequest, *, first_attempt: int = 1, in_doubt: bool = False
    ) -> AppendResult:
        """The request alone, with the store's retries: a group of one of
        utcp.append_group(), or utcp.append_events() on a schema without it.
        ``first_attempt`` 2 and ``in_doubt``: it went in a group before, and
        that group may have committed it."""
        stream_id, key = request.stream_id, request.key
        prepared = request.prepared
        grouped = self._db.append_group
        params: Any = (
            _group_params((request,))
            if grouped
            else (
                stream_id,
                request.expected,
                key,
                request.request_id,
                JsonbBytes(prepared.payload),
            )
        )
        # Whether an attempt's statement may have committed with nobody
        # knowing: set when the connection is lost after it was sent, cleared
        # when the server (or, without a key, the own-write check) answers.
        doubt = in_doubt

        def attempt(n: int) -> AppendResult:
            nonlocal doubt
            retry = n > 1
            with self._db.connection() as conn:
                # Without a key, a retry first looks for its own events: the
                # previous attempt may have committed before its reply was
                # lost. (With a key, the function itself finds the key and
                # its request id.)
                own = _own_write(conn, request, retry)
                if own is not None:
                    return own
                if key is None:
                    doubt = False  # looked: the earlier attempts wrote nothing
                for _ in range(MAX_STREAM_RACES):
                    try:
                        try:
                            if grouped:
                                rows = conn.execute(sql.APPEND_GROUP, params).fetchall()
                            else:
                                # Text results: psycopg loads this one row (an
                                # int8[] among its columns) faster as text.
                                row = conn.execute(sql.APPEND, params).fetchone()
                        except psycopg.Error as exc:
                            # The connection broke with the statement sent:
                            # no answer, and the server may have committed.
                            # An answer (a SQLSTATE) settles it.
                            doubt = exc.sqlstate is None and conn.closed
                            raise
                        doubt = False
                    except pg_errors.UniqueViolation as exc:
                        # Only what no check foresaw: a concurrent writer of
                        # the same event id, or (utcp.append_events, which
                        # locks nothing) of the stream's next version.
                        own = _own_write(conn, request, retry)
                        if own is not None:
                            return own
                        constraint = exc.diag.constraint_name
                        if constraint == "stored_events_event_id_key":
                            raise outcomes.duplicate_event_id(exc, stream_id, key) from exc
                        if constraint != "stored_events_pkey":
                            raise
                        if request.expected is not None and request.expected >= 0:
                            row = conn.execute(sql.STREAM_VERSION, (stream_id,)).fetchone()
                            raise outcomes.wrong_version(
                                int(row[0]) if row else None,
                                stream_id,
                                request.expected_version,
                                key,
                                exc,
                            ) from exc
                        continue  # ANY / STREAM_EXISTS: take the next version
                    except psycopg.Error as exc:
                        if exc.sqlstate == "UT002":  # raised by both functions
                            hazard = outcomes.log_order_hazard(exc, stream_id, key)
                            self._db.guard.hazard = hazard.message  # refuse until fixed
                            raise hazard from exc
                        if exc.sqlstate == "UT005":  # utcp.append_events()
                            raise outcomes.key_conflict(exc, stream_id, key) from exc
                        if exc.sqlstate != "UT001":  # utcp.append_events()
                            raise
                        own = _own_write(conn, request, retry)
                        if own is not None:
                            return own
                        raise outcomes.stale_version(
                            exc, stream_id, request.expected_version, key
                        ) from exc
                    if not grouped:
                        assert row is not None
                        return outcomes.result(row, request.request_id, key)
                    outcome = outcomes.read_group(rows, 1)[0]
                    if outcome.code in "vd":
                        # The stream moved, or an id is stored: perhaps by
                        # this call's own earlier attempt, committed late.
                        own = _own_write(conn, request, retry)
                        if own is not None:
                            return own
                    return outcomes.settle(request, outcome)
                raise StorageUnavailable(
                    f"lost the race for stream {stream_id!r} {MAX_STREAM_RACES} times in a row",
                    operation="append",
                    stream_id=stream_id,
                    idempotency_key=key,
                )

        try:
            result: AppendResult = self._db.run(
                "append",
                attempt,
                stream_id=stream_id,
                idempotency_key=key,
                first_attempt=first_attempt,
            )
        except EventStoreError as exc:
            if not doubt:
                raise
            raise outcomes.outcome_unknown(stream_id, prepared, key, exc) from exc
        return result


def _group_params(requests: Sequence[AppendRequest]) -> tuple[Any, ...]:
    """utcp.append_group()'s arguments: four arrays, one element per
    request, and one JSON array of the requests' event arrays (each already
    encoded: joined, not encoded again).

    The arrays go as array literals (text the statement casts): psycopg's
    list dumping costs ~30 µs an array (it inspects every element's type),
    the literals ~2 µs (bench/group_commit.py's lone writer pays it on
    every append)."""
    return (
        _text_array([r.stream_id for r in requests]),
        "{" + ",".join("NULL" if r.expected is None else str(r.expected) for r in requests) + "}",
        _text_array([r.key for r in requests]),
        "{" + ",".join(str(r.request_id) for r in requests) + "}",
        JsonbBytes(b"[" + b",".join(r.prepared.payload for r in requests) + b"]"),
    )


def _text_array(values: Sequence[str | None]) -> str:
    """A text[] literal: each element quoted, ``"`` and ``\\`` escaped (the
    values hold no NUL: the codec refuses it)."""
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


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
    conn: psycopg.Connection[Any], request: AppendRequest, retry: bool
) -> AppendResult | None:
    """On a retry without a key: this batch, if an earlier attempt
    committed it. Generated ids are this call's alone; ids the caller
    chose count only if the stored events are this batch, to the letter."""
    if not retry or request.key is not None:
        return None
    stream_id, prepared = request.stream_id, request.prepared
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
