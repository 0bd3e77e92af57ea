"""Reading the log: a stream, the global log in its order, and the
queries served by the log's indexes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

from psycopg.rows import dict_row

from . import sql
from .checkpoint import checkpoint_not_in_log, format_checkpoint, parse_checkpoint
from .codec import check_limit, check_stream_id
from .connection import Database
from .errors import ValidationError
from .events import RawStoredEvent, StoredEvent
from .limits import MAX_BIGINT

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
        however writers' commits interleave (DESIGN.md §4). An empty page
        means "nothing more committed yet".
        """
        tx, pos = parse_checkpoint(after)
        check_limit(limit, "read_all")
        # The page starts at the checkpoint's own event (sql.READ_ALL): one
        # more row, dropped here, that proves the checkpoint is in the log.
        fetch = min(limit + 1, MAX_BIGINT)
        head = format_checkpoint(tx, pos)  # the checkpoint's event, as the page shows it
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
                if int(tx) == 0 and pos == 0:  # the start of the log (START)
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
        since: Any = None,
        until: Any = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events by type, symbol, stream category or stream, with business
        time (``occurred_at``) in ``[since, until)``, in that time order.
        Served by the log's indexes."""
        check_limit(limit, "find_events")
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

    def query(self, operation: str, query: Any, params: Any, *, by_name: bool = False) -> list[Any]:
        def work(_: int) -> list[Any]:
            with self._db.connection() as conn:
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
