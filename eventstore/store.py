"""The event store's façade: one object, the log's whole public API.

Each job lives in a module of its own behind it: connections and error
mapping (:mod:`eventstore.connection`), the write path
(:mod:`eventstore.writing`, outcomes in :mod:`eventstore.outcomes`), reads
(:mod:`eventstore.reading`), integrity (:mod:`eventstore.chain`,
:mod:`eventstore.integrity`) and health (:mod:`eventstore.health`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, LiteralString, overload

from psycopg.sql import SQL, Composed

from . import chain, health
from .chain import DEFAULT_ANCHOR_LOCK_TIMEOUT, Anchor, ChainReport
from .connection import Database
from .events import (
    ANY,
    AppendResult,
    EventRegistry,
    ExpectedVersion,
    NewEvent,
    RawStoredEvent,
    StoredEvent,
)
from .health import StoreStatus
from .paging import Page
from .reading import Reader
from .settings import Settings
from .writing import Writer

__all__ = ["EventStore"]


class EventStore:
    """The audit log. Open with :meth:`open`; use as a context manager.

    Thread-safe: one store serves many threads through its pool.
    """

    def __init__(
        self,
        dsn: str | None = None,
        settings: Settings | None = None,
        *,
        registry: EventRegistry | None = None,
    ) -> None:
        """Connect: the same as :meth:`open`."""
        db = Database.open(dsn, settings)
        self._db = db
        self._writer = Writer(db, registry if registry is not None else EventRegistry())
        self._reader = Reader(db)

    @property
    def settings(self) -> Settings:
        return self._db.settings

    @property
    def registry(self) -> EventRegistry:
        """Event type name → payload Struct: appends of a registered type
        are validated against it (``trading.register`` adds the trading
        types)."""
        return self._writer.registry

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
        return cls(dsn, settings, registry=registry)

    def close(self) -> None:
        """Close every connection. Idempotent."""
        self._writer.close()
        self._db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        return self._writer.append(
            stream_id, events, expected_version=expected_version, idempotency_key=idempotency_key
        )

    # -- reading ------------------------------------------------------------

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
        """The events of one stream, from ``from_version`` on, in version order.

        ``raw=True``: :class:`RawStoredEvent`, each payload and metadata as
        its JSON bytes, undecoded (decode lazily, or into the registered
        Struct with ``store.registry.decode_raw(event)``)."""
        if raw:
            return self._reader.read_stream(
                stream_id, from_version=from_version, limit=limit, raw=True
            )
        return self._reader.read_stream(stream_id, from_version=from_version, limit=limit)

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it does not exist)."""
        return self._reader.stream_version(stream_id)

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
        """The next page of the global log after checkpoint ``after``.

        Every committed event exactly once, in one order that is the same
        for every reader, and never behind a checkpoint already handed out,
        however writers' commits interleave (docs/design.md §4). An empty page
        means "nothing more committed yet".

        ``raw=True``: :class:`RawStoredEvent`, each payload and metadata as
        its JSON bytes, undecoded (decode lazily, or into the registered
        Struct with ``store.registry.decode_raw(event)``).
        """
        if raw:
            return self._reader.read_all(after=after, limit=limit, types=types, raw=True)
        return self._reader.read_all(after=after, limit=limit, types=types)

    def iter_stream(
        self, stream_id: str, *, from_version: int = 1, page_size: int = 1000
    ) -> Iterator[StoredEvent]:
        """The events of one stream, in version order, ``page_size`` at a
        time: memory stays flat however long the stream is."""
        return self._reader.iter_stream(stream_id, from_version=from_version, page_size=page_size)

    def iter_all(
        self,
        *,
        after: str | None = None,
        page_size: int = 1000,
        types: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """The global log after checkpoint ``after`` (:meth:`read_all`'s
        order and guarantees), ``page_size`` events at a time, until nothing
        more is readable yet."""
        return self._reader.iter_all(after=after, page_size=page_size, types=types)

    def checkpoint_in_log(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` names an event of this log (the start
        always does); False after a restore to a point before it."""
        return self._reader.checkpoint_in_log(checkpoint)

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
        time (``occurred_at``, timezone-aware bounds) in ``[since, until)``,
        in that time order (position breaks ties): a :class:`Page` of at
        most ``limit`` events, whose ``next`` (None at the end) is the
        ``after`` of the next page. Served by the log's indexes."""
        return self._reader.find_events(
            type=type,
            symbol=symbol,
            category=category,
            stream_id=stream_id,
            since=since,
            until=until,
            limit=limit,
            after=after,
        )

    def query(
        self,
        operation: str,
        query: LiteralString | SQL | Composed,
        params: Sequence[Any] | Mapping[str, Any] = (),
        *,
        by_name: bool = False,
    ) -> list[Any]:
        """Rows of a read-only query: the one extension point for read
        models built on the store (the trading adapter's checks, the
        projections' tables; docs/architecture.md, "Building on the store").

        The query runs in a ``READ ONLY`` transaction, so the database
        refuses any write whatever the role may do; with the store's
        retries and client-side deadlines, and failures mapped to an
        :class:`EventStoreError` naming ``operation``. ``query`` is a
        literal or a ``psycopg.sql`` composition with its values in
        ``params`` (never formatted into the text). Rows are tuples, or
        dicts by column name with ``by_name=True``.
        """
        return self._reader.query(operation, query, params, by_name=by_name)

    def pool_stats(self) -> dict[str, int]:
        """The connection pool's figures (``pool_size``, ``pool_available``,
        ``requests_waiting``, …), for metrics."""
        return {k: int(v) for k, v in self._db.pool.get_stats().items()}

    # -- operations ---------------------------------------------------------

    def verify_chain(self, stream_id: str | None = None, *, limit: int = 100) -> ChainReport:
        """Recompute every hash and check every stream's chain, and (for the
        whole log) every anchor: a changed, removed or re-ordered event shows
        up as a problem. A stream's newest events are covered by the anchors
        taken after them (:meth:`anchor`)."""
        return chain.verify_chain(self._db, stream_id, limit=limit)

    def anchor(self, *, lock_timeout: float = DEFAULT_ANCHOR_LOCK_TIMEOUT) -> Anchor | None:
        """Take an anchor over every event readers can see now (None while
        the log is empty; the latest anchor when nothing new was committed).

        An operator's act: the store must be connected as a member of
        ``utcp_operator`` (or a superuser). Anchors are taken one at a time;
        if another session holds the anchors' lock for longer than
        ``lock_timeout`` seconds, this fails with a :class:`StorageError`
        naming that session.
        """
        return chain.take_anchor(self._db, lock_timeout=lock_timeout)

    def status(self) -> StoreStatus:
        """Counts, the oldest running transaction, and the restore hazard."""
        return health.status(self._db)
