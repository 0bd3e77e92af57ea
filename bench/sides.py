"""The three sides of the benchmark, each writing and reading the same events:

* ``store``: the event store's public API (``EventStore``);
* ``raw``: plain psycopg into ``bench.raw_events``, a copy of
  ``utcp.stored_events`` (same columns and indexes, no triggers), one
  autocommit connection per writer thread, single-row inserts where the
  case has one event (bench/append_bench.py: RawStream);
* ``es``: the ``eventsourcing`` library's PostgreSQL application recorder
  with its defaults (table lock per insert, bytea payloads), fed the same
  msgspec-encoded payload bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.conninfo import conninfo_to_dict

from eventstore import EventStore, NewEvent, WrongExpectedVersion

from .append_bench import METADATA, RAW_INSERT_ONE, RawStream

EVENT_TYPE: Final = "BenchTradeRecorded"
PAGE: Final = 1000
Payload = dict[str, str]

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode

RAW_READ: Final = """
SELECT position, tx_id::text AS tx, event_id, stream_id, stream_version, type, data, metadata,
       symbol, occurred_at, created_at, prev_hash, hash
  FROM bench.raw_events
 WHERE (tx_id, position) > (%s::xid8, %b)
 ORDER BY tx_id, position
 LIMIT %b"""

# The same page with the payloads as bytes, the cheapest way measured
# (the store's raw mode does the same: eventstore/sql.py RAW_DATA).
RAW_READ_BYTES: Final = RAW_READ.replace(
    "data, metadata", "convert_to(data::text, 'UTF8'), convert_to(metadata::text, 'UTF8')"
)

RAW_READ_STREAM: Final = """
SELECT position, tx_id::text, event_id, stream_id, stream_version, type, data, metadata,
       symbol, occurred_at, created_at, prev_hash, hash
  FROM bench.raw_events WHERE stream_id = %b ORDER BY stream_version"""

RAW_HEAD: Final = """
SELECT stream_version, hash FROM bench.raw_events WHERE stream_id = %b
 ORDER BY stream_version DESC LIMIT 1"""


# -- store --------------------------------------------------------------------


def store_single(store: EventStore, stream: str, payloads: Sequence[Payload]) -> int:
    append = store.append
    return sum(len(append(stream, [NewEvent(EVENT_TYPE, p, METADATA)]).positions) for p in payloads)


def store_batches(store: EventStore, stream: str, payloads: Sequence[Payload], size: int) -> int:
    n = 0
    for b in range(0, len(payloads), size):
        events = [NewEvent(EVENT_TYPE, p, METADATA) for p in payloads[b : b + size]]
        n += len(store.append(stream, events).positions)
    return n


def store_hot(store: EventStore, stream: str, payloads: Sequence[Payload]) -> tuple[int, int]:
    """Append each payload with the expected version this writer last saw;
    on a conflict, look the version up again and retry. (events, conflicts)."""
    version = store.stream_version(stream)
    conflicts = 0
    for p in payloads:
        while True:
            try:
                result = store.append(
                    stream, [NewEvent(EVENT_TYPE, p, METADATA)], expected_version=version
                )
            except WrongExpectedVersion:
                conflicts += 1
                version = store.stream_version(stream)
                continue
            version = result.last_version
            break
    return len(payloads), conflicts


def store_read_all(store: EventStore, *, raw: bool) -> int:
    n = 0
    after: str | None = None
    while True:
        page = (
            store.read_all(after=after, limit=PAGE, raw=raw)
            if raw
            else store.read_all(after=after, limit=PAGE)
        )
        if not page:
            return n
        n += len(page)
        after = page[-1].checkpoint


def store_read_streams(store: EventStore, streams: Sequence[str]) -> int:
    return sum(len(store.read_stream(s)) for s in streams)


# -- raw ----------------------------------------------------------------------


def raw_single(conn: psycopg.Connection[Any], stream: str, payloads: Sequence[Payload]) -> int:
    writer = RawStream(conn, stream)
    return sum(writer.append_one(p) for p in payloads)


def raw_batches(
    conn: psycopg.Connection[Any], stream: str, payloads: Sequence[Payload], size: int
) -> int:
    writer = RawStream(conn, stream)
    return sum(writer.append_unnest(payloads[b : b + size]) for b in range(0, len(payloads), size))


def raw_hot(
    conn: psycopg.Connection[Any], stream: str, payloads: Sequence[Payload]
) -> tuple[int, int]:
    """The raw writer's optimistic concurrency: read the head (version, hash),
    insert version + 1 chained to it; the primary key refuses a lost race,
    and the writer reads the head again."""
    writer = RawStream(conn, stream)
    conflicts = 0

    def load_head() -> None:
        row = conn.execute(RAW_HEAD, (stream,), binary=True).fetchone()
        writer.version, writer.head = (0, None) if row is None else (int(row[0]), bytes(row[1]))

    load_head()
    for p in payloads:
        while True:
            version, head = writer.version, writer.head
            try:
                writer.append_one(p)
            except psycopg.errors.UniqueViolation:
                conflicts += 1
                writer.version, writer.head = version, head
                load_head()
                continue
            break
    return len(payloads), conflicts


def raw_read_all(conn: psycopg.Connection[Any], *, raw: bool) -> int:
    n = 0
    last: tuple[str, int] = ("0", 0)
    cur = conn.cursor(binary=True)
    query = RAW_READ_BYTES if raw else RAW_READ
    while True:
        rows = cur.execute(query, (*last, PAGE)).fetchall()
        if not rows:
            return n
        n += len(rows)
        last = (rows[-1][1], rows[-1][0])


def raw_read_streams(conn: psycopg.Connection[Any], streams: Sequence[str]) -> int:
    cur = conn.cursor(binary=True)
    return sum(len(cur.execute(RAW_READ_STREAM, (s,)).fetchall()) for s in streams)


# -- eventsourcing ------------------------------------------------------------


class EsSide:
    """The eventsourcing library's PostgreSQL application recorder, with its
    defaults, in table ``public.es_events`` of the benchmark's database."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        parts = conninfo_to_dict(dsn)
        self.datastore = PostgresDatastore(
            dbname=str(parts.get("dbname")),
            host=str(parts.get("host", "127.0.0.1")),
            port=str(parts.get("port", "5432")),
            user=str(parts.get("user", "")),
            password=str(parts.get("password", "")),
            pool_size=pool_size,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore, events_table_name="es_events")
        self.recorder.create_table()
        self.ids: dict[str, uuid.UUID] = {}

    def close(self) -> None:
        self.datastore.close()

    def stream(self, name: str) -> uuid.UUID:
        if name not in self.ids:
            self.ids[name] = uuid.uuid5(uuid.NAMESPACE_URL, name)
        return self.ids[name]

    def _events(self, stream: uuid.UUID, first: int, payloads: Sequence[Payload]) -> list[Any]:
        return [
            StoredEvent(
                originator_id=stream,
                originator_version=first + i,
                topic=EVENT_TYPE,
                state=_encode(p),
            )
            for i, p in enumerate(payloads)
        ]

    def single(self, name: str, payloads: Sequence[Payload]) -> int:
        stream = self.stream(name)
        insert = self.recorder.insert_events
        for i, p in enumerate(payloads):
            insert(self._events(stream, i + 1, [p]))
        return len(payloads)

    def batches(self, name: str, payloads: Sequence[Payload], size: int) -> int:
        stream = self.stream(name)
        for b in range(0, len(payloads), size):
            self.recorder.insert_events(self._events(stream, b + 1, payloads[b : b + size]))
        return len(payloads)

    def hot(self, name: str, payloads: Sequence[Payload]) -> tuple[int, int]:
        """Its own optimistic concurrency: the next version, refused by the
        primary key (IntegrityError) when another writer took it."""
        stream = self.stream(name)
        conflicts = 0

        def head() -> int:
            last = self.recorder.select_events(stream, desc=True, limit=1)
            return last[0].originator_version if last else 0

        version = head()
        for p in payloads:
            while True:
                try:
                    self.recorder.insert_events(self._events(stream, version + 1, [p]))
                except IntegrityError:
                    conflicts += 1
                    version = head()
                    continue
                version += 1
                break
        return len(payloads), conflicts

    def read_all(self, *, raw: bool) -> int:
        n = 0
        start = 1
        select = self.recorder.select_notifications
        while True:
            page = select(start, PAGE)
            if not page:
                return n
            if not raw:
                for item in page:
                    _decode(item.state)
            n += len(page)
            start = page[-1].id + 1

    def read_streams(self, names: Sequence[str]) -> int:
        n = 0
        for name in names:
            for event in self.recorder.select_events(self.stream(name)):
                _decode(event.state)
                n += 1
        return n


def count_rows(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM utcp.stored_events), (SELECT count(*) FROM bench.raw_events),"
        " (SELECT count(*) FROM public.es_events)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


Work = Callable[[int], int]
__all__ = ["RAW_INSERT_ONE", "EsSide", "Work"]
