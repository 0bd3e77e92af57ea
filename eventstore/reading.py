"""Reading the log: a stream, the global log in its order, and the
queries served by the log's indexes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, LiteralString, overload

from psycopg.rows import dict_row
from psycopg.sql import SQL, Composed

from . import sql
from .checkpoint import Checkpoint, checkpoint_not_in_log
from .codec import check_identifier, check_limit, check_query_time, check_stream_id
from .connection import Database
from .errors import ValidationError
from .events import RawStoredEvent, StoredEvent
from .limits import MAX_BIGINT
from .paging import Page, page_cursor, parse_page_cursor

__all__ = ["Reader"]


class Reader:
    def __init__(self, db: Database) -> None:
        self._db = db

    @overload
    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = ...,
        limit: int | None = ...,
        raw: Literal[False] = ...,
    ) -> list[StoredEvent]: ...
    @overload
    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = ...,
        limit: int | None = ...,
        raw: Literal[True],
    ) -> list[RawStoredEvent]: ...
    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        raw: bool = False,
    ) -> list[StoredEvent] | list[RawStoredEvent]:
        """The events of one stream, from ``from_version`` on, in version
        order (``raw``: payloads as their JSON bytes, RawStoredEvent)."""
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
        check_limit(limit, "read_stream", allow_none=True)
        return self._fetch_events(
            "read_stream",
            sql.READ_STREAM_RAW if raw else sql.READ_STREAM,
            (stream_id, from_version, limit),
            stream_id=stream_id,
            raw=raw,
        )

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it does not exist)."""
        check_stream_id(stream_id, "stream_version")

        def work(_: int) -> int:
            with self._db.connection() as conn:
                row = conn.execute(sql.STREAM_VERSION, (stream_id,)).fetchone()
                return int(row[0]) if row else 0

        version: int = self._db.run("stream_version", work, stream_id=stream_id)
        return version

    @overload
    def read_all(
        self,
        *,
        after: str | None = ...,
        limit: int = ...,
        types: Sequence[str] | None = ...,
        raw: Literal[False] = ...,
    ) -> list[StoredEvent]: ...
    @overload
    def read_all(
        self,
        *,
        after: str | None = ...,
        limit: int = ...,
        types: Sequence[str] | None = ...,
        raw: Literal[True],
    ) -> list[RawStoredEvent]: ...
    def read_all(
        self,
        *,
        after: str | None = None,
        limit: int = 1000,
        types: Sequence[str] | None = None,
        raw: bool = False,
    ) -> list[StoredEvent] | list[RawStoredEvent]:
        """The next page of the global log after checkpoint ``after``
        (``raw``: payloads as their JSON bytes, RawStoredEvent).

        Every committed event exactly once, in one order that is the same
        for every reader, and never behind a checkpoint already handed out,
        however writers' commits interleave (docs/design.md §4). An empty page
        means "nothing more committed yet".
        """
        checkpoint = Checkpoint.parse(after)
        tx, pos = checkpoint.tx_param, checkpoint.position
        check_limit(limit, "read_all")
        # The page starts at the checkpoint's own event (sql.READ_ALL): one
        # more row, dropped here, that proves the checkpoint is in the log.
        fetch = min(limit + 1, MAX_BIGINT)
        head = str(checkpoint)  # the checkpoint's event, as the page shows it
        query: str
        params: tuple[Any, ...]
        if types is None:
            query = sql.READ_ALL_RAW if raw else sql.READ_ALL
            params = (tx, pos, fetch)
        elif isinstance(types, str) or not all(isinstance(t, str) for t in types):
            raise ValidationError(
                "types must be a sequence of type names", field="types", operation="read_all"
            )
        else:
            query = sql.READ_ALL_TYPES_RAW if raw else sql.READ_ALL_TYPES
            params = (tx, pos, list(types), fetch)

        make = RawStoredEvent if raw else StoredEvent

        def work(_: int) -> list[Any]:
            with self._db.connection() as conn:
                rows = conn.cursor(binary=True).execute(query, params).fetchall()
                if checkpoint.is_start:
                    return [make(*row) for row in rows[:limit]]
                if rows and rows[0][1] == head:
                    return [make(*row) for row in rows[1:]]
                probe = conn.execute(sql.CHECKPOINT_PROBE, {"tx": tx, "pos": pos}).fetchone()
            if probe is not None and (probe[0] or probe[1]):
                # In the log but not visible yet (or not replayed yet, on a
                # standby): nothing to read after it for now.
                return []
            raise checkpoint_not_in_log(head)

        events: list[StoredEvent] | list[RawStoredEvent] = self._db.run("read_all", work)
        return events

    def find_events(
        self,
        *,
        type: str | None = None,
        symbol: str | None = None,
        category: str | None = None,
        stream_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> Page[StoredEvent]:
        """Events by type, symbol, stream category or stream, with business
        time (``occurred_at``) in ``[since, until)``, in that time order
        (position breaks ties), a page of at most ``limit``; ``after``: the
        ``next`` cursor of the page before. Served by the log's indexes."""
        op = "find_events"
        for field, value in (("type", type), ("symbol", symbol), ("category", category)):
            if value is not None:
                check_identifier(value, field, what=field, operation=op, stream_id=None)
        if stream_id is not None:
            check_stream_id(stream_id, op)
        check_query_time(since, "since", op)
        check_query_time(until, "until", op)
        check_limit(limit, op)
        after_at, after_position = (None, None) if after is None else parse_page_cursor(after, op)
        query = sql.find_events(
            type=type is not None,
            symbol=symbol is not None,
            category=category is not None,
            stream_id=stream_id is not None,
            since=since is not None,
            until=until is not None,
            after=after is not None,
        )
        params = {
            "type": type,
            "symbol": symbol,
            "category": category,
            "stream_id": stream_id,
            "since": since,
            "until": until,
            "after_at": after_at,
            "after_position": after_position,
            # One more than the page: whether there is a next one.
            "limit": min(limit + 1, MAX_BIGINT),
        }
        events = self._fetch_events(op, query, params)
        if len(events) > limit:
            return Page(events[:limit], page_cursor(events[limit - 1]))
        return Page(events)

    def iter_stream(
        self, stream_id: str, *, from_version: int = 1, page_size: int = 1000
    ) -> Iterator[StoredEvent]:
        """The events of one stream, from ``from_version`` on, in version
        order, read ``page_size`` at a time (one round trip each, only when
        the events before are consumed): memory stays flat however long
        the stream is. Each page is a consistent read of its own. The
        arguments are checked at the call, not at the first event."""
        check_limit(page_size, "read_stream")
        first = self.read_stream(stream_id, from_version=from_version, limit=page_size)

        def pages(page: list[StoredEvent]) -> Iterator[StoredEvent]:
            while True:
                yield from page
                if len(page) < page_size:
                    return
                version = page[-1].stream_version + 1
                page = self.read_stream(stream_id, from_version=version, limit=page_size)

        return pages(first)

    def iter_all(
        self,
        *,
        after: str | None = None,
        page_size: int = 1000,
        types: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """The global log after checkpoint ``after``, like :meth:`read_all`,
        ``page_size`` events at a time, until nothing more is committed
        (readable) yet. Resume from the last event's ``checkpoint``. The
        arguments are checked (and the first page read) at the call."""
        check_limit(page_size, "read_all")
        first = self.read_all(after=after, limit=page_size, types=types)

        def pages(page: list[StoredEvent]) -> Iterator[StoredEvent]:
            while page:
                yield from page
                page = self.read_all(after=page[-1].checkpoint, limit=page_size, types=types)

        return pages(first)

    def checkpoint_in_log(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` names an event of this log (the start does)."""
        at = Checkpoint.parse(checkpoint, field="checkpoint", operation="checkpoint_in_log")
        if at.is_start:
            return True
        rows = self.query(
            "checkpoint_in_log", sql.CHECKPOINT_IN_LOG, {"tx": at.tx_param, "pos": at.position}
        )
        return bool(rows and rows[0][0])

    def query(
        self,
        operation: str,
        query: LiteralString | SQL | Composed,
        params: Sequence[Any] | Mapping[str, Any],
        *,
        by_name: bool = False,
    ) -> list[Any]:
        """Rows of a read-only query (:meth:`EventStore.query`): the database
        refuses any write in its transaction."""

        def work(_: int) -> list[Any]:
            with self._db.connection() as conn, conn.transaction():
                conn.execute(sql.READ_ONLY)
                cur = conn.cursor(row_factory=dict_row) if by_name else conn.cursor()
                return cur.execute(query, params).fetchall()

        rows: list[Any] = self._db.run(operation, work)
        return rows

    @overload
    def _fetch_events(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        stream_id: str | None = ...,
        raw: Literal[False] = ...,
    ) -> list[StoredEvent]: ...
    @overload
    def _fetch_events(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        stream_id: str | None = ...,
        raw: bool,
    ) -> list[StoredEvent] | list[RawStoredEvent]: ...
    def _fetch_events(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        stream_id: str | None = None,
        raw: bool = False,
    ) -> list[StoredEvent] | list[RawStoredEvent]:
        make = RawStoredEvent if raw else StoredEvent

        def work(_: int) -> list[Any]:
            with self._db.connection() as conn:
                rows = conn.cursor(binary=True).execute(query, params).fetchall()
            return [make(*row) for row in rows]

        events: list[StoredEvent] | list[RawStoredEvent] = self._db.run(
            operation, work, stream_id=stream_id
        )
        return events
