"""Verification that does not trust the database it checks.

``eventstore verify`` reads the log in global order ``(tx_id, position)``, a
page at a time (keyset pages inside one REPEATABLE READ, READ ONLY
transaction: one consistent snapshot, and no statement reads more than a
page, so the store's ``statement_timeout`` holds whatever the log's size),
and recomputes in Python, from the rows' own fields:

* every event's hash under its own scheme (``hash_version`` 1:
  ``utcp.event_content`` of sqitch/deploy/append_events.sql, 2:
  ``utcp.event_content_v2`` of sqitch/deploy/hash_v2.sql and
  append_guarded.sql), from the PostgreSQL text forms of the fields
  (``data::text``, ``extract(epoch …)::text``), never calling a function of
  schema ``utcp`` (a superuser can replace those);
* every stream's chain (version n - 1 exists and its hash is this event's
  ``prev_hash``; version 1 has none; schemes only move forward);
* every anchor's chained digest (sqitch/deploy/chain_anchors.sql):
  ``digest_k = sha256(digest_{k-1} || sha256(hashes of the events in
  (through_{k-1}, through_k], in global order)))``, compared with the row in
  ``utcp.chain_anchors`` and with the anchors saved outside the database
  (``eventstore anchor --json``; :func:`load_saved_anchors`), which the
  database's owner cannot rewrite;
* every idempotency key against the events it points at.

With ``from_anchor`` the check starts at a saved anchor: its digest and
event count are trusted as the state of the log up to its checkpoint, and
only what follows is read. That proves the events after the checkpoint are
well formed and chain onto the events before it, and that the anchors taken
later extend the saved one; it proves nothing about the events before the
checkpoint (verify once in full, against the same saved anchor, for that).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .checkpoint import Checkpoint
from .errors import StorageUnavailable, ValidationError, first_line
from .settings import Settings, redact, redact_dsn

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IntegrityProblem",
    "IntegrityReport",
    "SavedAnchor",
    "connect",
    "event_content_v1",
    "event_content_v2",
    "load_saved_anchors",
    "verify_log",
]

#: Events (and keys, anchors) read per statement.
DEFAULT_CHUNK_SIZE: Final = 5000
#: Problems kept in the report (the count goes on).
DEFAULT_PROBLEM_LIMIT: Final = 1000

_V2_TAG: Final = b"utcp-event-v2"
_NULL_FIELD: Final = b"\xff\xff\xff\xff"
_LENGTH: Final = struct.Struct(">i")
_SEPARATOR: Final = "\x1f"
_ZERO: Final = (0, 0)

# -- SQL (only pg_catalog's own casts and operators; no utcp function) ---------

EVENTS_PAGE: Final = """
SELECT e.tx_id::text, e.position, e.event_id::text, e.stream_id, e.stream_version::text,
       e.type, e.data::text, e.metadata::text, e.symbol,
       extract(epoch FROM e.occurred_at)::text, extract(epoch FROM e.created_at)::text,
       e.recorded_by, e.hash_version, e.prev_hash, e.hash,
       p.stream_id IS NOT NULL, p.hash, p.hash_version
  FROM utcp.stored_events e
  LEFT JOIN utcp.stored_events p
         ON p.stream_id = e.stream_id AND p.stream_version = e.stream_version - 1
 WHERE (e.tx_id, e.position) > (%s::text::xid8, %s::bigint)
 ORDER BY e.tx_id, e.position
 LIMIT %s"""

ANCHORS_PAGE: Final = """
SELECT anchor_id, through_tx::text, through_position, events, digest
  FROM utcp.chain_anchors
 WHERE anchor_id > %s
 ORDER BY anchor_id
 LIMIT %s"""

KEYS_PAGE: Final = """
SELECT k.key, k.stream_id, k.first_version, k.last_version, k.first_event_id::text,
       (SELECT count(*) FROM utcp.stored_events e
         WHERE e.stream_id = k.stream_id
           AND e.stream_version BETWEEN k.first_version AND k.last_version),
       (SELECT e.event_id::text FROM utcp.stored_events e
         WHERE e.stream_id = k.stream_id AND e.stream_version = k.first_version)
  FROM utcp.idempotency_keys k
 WHERE k.key > %s
 ORDER BY k.key
 LIMIT %s"""

CAN_READ_KEYS: Final = (
    "SELECT pg_catalog.has_table_privilege('utcp.idempotency_keys'::pg_catalog.regclass, 'SELECT')"
)

ESTIMATED_EVENTS: Final = """
SELECT greatest(c.reltuples, 0)::bigint FROM pg_catalog.pg_class c
 WHERE c.oid = 'utcp.stored_events'::pg_catalog.regclass"""


# -- the canonical bytes of an event -------------------------------------------


def event_content_v1(
    *,
    event_id: str,
    stream_id: str,
    stream_version: str,
    type_: str,
    data: str,
    metadata: str | None,
    symbol: str | None,
    occurred_epoch: str,
    created_epoch: str,
) -> bytes:
    """``utcp.event_content``: the fields' text forms joined with U+001F
    (``concat_ws``; NULL metadata and symbol are '')."""
    return _SEPARATOR.join(
        (
            event_id,
            stream_id,
            stream_version,
            type_,
            data,
            metadata if metadata is not None else "",
            symbol if symbol is not None else "",
            occurred_epoch,
            created_epoch,
        )
    ).encode()


def _field(value: str | None) -> bytes:
    if value is None:
        return _NULL_FIELD
    raw = value.encode()
    return _LENGTH.pack(len(raw)) + raw


def _micros(epoch: str) -> str:
    """``(extract(epoch FROM t) * 1000000)::bigint::text`` from the epoch's
    numeric text (exact: timestamps have microsecond precision)."""
    whole, dot, fraction = epoch.partition(".")
    if dot and len(fraction) == 6 and fraction.isdigit() and whole.lstrip("-").isdigit():
        return str(int(whole + fraction))  # the usual form: "1764672000.123456"
    return str(int(Decimal(epoch).scaleb(6).to_integral_value()))


def event_content_v2(
    *,
    event_id: str,
    stream_id: str,
    stream_version: str,
    type_: str,
    data: str,
    metadata: str | None,
    symbol: str | None,
    occurred_epoch: str,
    created_epoch: str,
    recorded_by: str | None,
) -> bytes:
    """``utcp.event_content_v2``: a tag, then every field as its length
    (4 bytes, big endian; -1 for NULL) and its UTF-8 bytes."""
    return b"".join(
        (
            _V2_TAG,
            _field(event_id),
            _field(stream_id),
            _field(stream_version),
            _field(type_),
            _field(data),
            _field(metadata),
            _field(symbol),
            _field(_micros(occurred_epoch)),
            _field(_micros(created_epoch)),
            _field(recorded_by),
        )
    )


# -- saved anchors ----------------------------------------------------------------


@dataclass(frozen=True)
class SavedAnchor:
    """An anchor as ``eventstore anchor`` printed it, kept outside the database."""

    anchor_id: int
    through: tuple[int, int]
    events: int
    digest: bytes
    source: str = ""

    @property
    def checkpoint(self) -> str:
        return f"{self.through[0]}/{self.through[1]}"


_HUMAN = re.compile(
    r"anchor #(?P<id>\d+): (?P<events>\d+) events through checkpoint "
    r"(?P<checkpoint>\d+/\d+)\s+sha256 (?P<digest>[0-9a-fA-F]{64})"
)


def _checkpoint(text: str) -> tuple[int, int]:
    """(tx, position) of a saved anchor's checkpoint; a ValidationError (a
    ValueError) when it is not one."""
    at = Checkpoint.parse(text, field="checkpoint", operation="verify_anchors")
    return at.tx, at.position


def parse_saved_anchors(text: str, source: str = "") -> list[SavedAnchor]:
    """The anchors in ``text``: JSON lines of ``eventstore anchor --json``
    (one or many, e.g. the cron job's log), or its human output."""
    anchors: list[SavedAnchor] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
            if isinstance(record, dict) and record.get("anchored") is False:
                continue  # `eventstore anchor --json` on an empty log: no anchor
            anchors.append(
                SavedAnchor(
                    anchor_id=int(record["anchor_id"]),
                    through=_checkpoint(str(record["checkpoint"])),
                    events=int(record["events"]),
                    digest=bytes.fromhex(str(record["digest"])),
                    source=where,
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(
                f"{where}: not an anchor saved by `eventstore anchor --json` ({exc})",
                field="anchor",
                operation="verify",
            ) from exc
    if not anchors:
        for match in _HUMAN.finditer(text):
            anchors.append(
                SavedAnchor(
                    anchor_id=int(match["id"]),
                    through=_checkpoint(match["checkpoint"]),
                    events=int(match["events"]),
                    digest=bytes.fromhex(match["digest"]),
                    source=source,
                )
            )
    if not anchors:
        raise ValidationError(
            f"{source}: no anchor in it (save the line `eventstore anchor --json` prints)",
            field="anchor",
            operation="verify",
        )
    return anchors


def load_saved_anchors(paths: Iterable[str]) -> list[SavedAnchor]:
    """Every anchor in the files ``paths`` (see :func:`parse_saved_anchors`);
    the same anchor saved twice counts once, two different ones under the
    same id are refused."""
    found: dict[int, SavedAnchor] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(
                f"cannot read anchor file {path}: {exc}", field="anchor", operation="verify"
            ) from exc
        for anchor in parse_saved_anchors(text, path):
            other = found.get(anchor.anchor_id)
            if other is not None and (other.through, other.events, other.digest) != (
                anchor.through,
                anchor.events,
                anchor.digest,
            ):
                raise ValidationError(
                    f"two different saved anchors #{anchor.anchor_id} "
                    f"({other.source} and {anchor.source})",
                    field="anchor",
                    operation="verify",
                )
            found.setdefault(anchor.anchor_id, anchor)
    return [found[k] for k in sorted(found)]


# -- the report -----------------------------------------------------------------


@dataclass(frozen=True)
class IntegrityProblem:
    """One thing that does not check out. ``kind``: 'event', 'anchor' (a row
    of utcp.chain_anchors), 'saved_anchor' (an anchor kept outside) or 'key'."""

    kind: str
    problem: str
    stream_id: str | None = None
    stream_version: int | None = None
    position: int | None = None
    anchor_id: int | None = None
    checkpoint: str | None = None
    key: str | None = None

    def line(self) -> str:
        """One line for people."""
        if self.kind == "event":
            return f"  {self.position:>6}  {self.stream_id} v{self.stream_version}  {self.problem}"
        if self.kind == "anchor":
            return f"  anchor #{self.anchor_id} (through {self.checkpoint})  {self.problem}"
        if self.kind == "saved_anchor":
            return f"  saved anchor #{self.anchor_id} (through {self.checkpoint})  {self.problem}"
        return f"  idempotency key {self.key!r}  {self.problem}"

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class IntegrityReport:
    events_checked: int = 0
    streams_checked: int = 0
    anchors_checked: int = 0
    saved_anchors_checked: int = 0
    #: None when the connected role may not read utcp.idempotency_keys.
    keys_checked: int | None = 0
    #: The saved anchor the check started from (``from_anchor``), if any.
    from_anchor: int | None = None
    #: Statements that read events (each at most ``chunk_size`` rows).
    event_pages: int = 0
    problems: list[IntegrityProblem] = field(default_factory=list)
    problem_count: int = 0
    limit: int = DEFAULT_PROBLEM_LIMIT

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: IntegrityProblem) -> None:
        self.problem_count += 1
        if len(self.problems) < self.limit:
            self.problems.append(problem)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "streams_checked": self.streams_checked,
            "anchors_checked": self.anchors_checked,
            "saved_anchors_checked": self.saved_anchors_checked,
            "keys_checked": self.keys_checked,
            "from_anchor": self.from_anchor,
            "problems": self.problem_count,
        }


# -- the check ------------------------------------------------------------------


@dataclass
class _Boundary:
    anchor_id: int
    through: tuple[int, int]
    db: tuple[tuple[int, int], int, bytes] | None  # the row in utcp.chain_anchors
    saved: SavedAnchor | None


def _pages(
    conn: psycopg.Connection[Any],
    query: str,
    start: Sequence[Any],
    key: Callable[[tuple[Any, ...]], Sequence[Any]],
    chunk_size: int,
) -> Iterator[list[tuple[Any, ...]]]:
    """Keyset pages of ``query`` (its parameters: the key after which to
    start, then the page size)."""
    after = list(start)
    while True:
        rows = conn.execute(query, (*after, chunk_size)).fetchall()
        if rows:
            yield rows
        if len(rows) < chunk_size:
            return
        after = list(key(rows[-1]))


def _hash_of(row: tuple[Any, ...]) -> bytes | None:
    """The hash of the event in ``row`` (an EVENTS_PAGE row), recomputed;
    None when its scheme is unknown or its fields cannot be encoded."""
    (_, _, event_id, stream_id, version, type_, data, metadata, symbol, occurred, created) = row[
        :11
    ]
    scheme, prev_hash = row[12], row[13]
    fields = {
        "event_id": event_id,
        "stream_id": stream_id,
        "stream_version": version,
        "type_": type_,
        "data": data,
        "metadata": metadata,
        "symbol": symbol,
        "occurred_epoch": occurred,
        "created_epoch": created,
    }
    try:
        if scheme == 1:
            content = event_content_v1(**fields)
        elif scheme == 2:
            content = event_content_v2(**fields, recorded_by=row[11])
        else:
            return None
    except (InvalidOperation, ValueError, OverflowError, TypeError, AttributeError):
        return None
    return hashlib.sha256((prev_hash or b"") + content).digest()


def _event_problems(row: tuple[Any, ...], computed: bytes | None) -> Iterator[str]:
    version = int(row[4])
    scheme, prev_hash, stored = row[12], row[13], row[14]
    pred_found, pred_hash, pred_scheme = row[15], row[16], row[17]
    if scheme not in (1, 2):
        yield f"unknown hash scheme {scheme}"
    elif computed is None:
        yield "its fields cannot be encoded under its hash scheme"
    elif computed != stored:
        yield "hash does not match the event's content"
    if version < 1:
        yield "stream version below 1"
    elif version == 1:
        if prev_hash is not None:
            yield "first event of its stream has a prev_hash"
    elif not pred_found:
        yield f"version gap before this event (v{version - 1} is missing)"
    else:
        if prev_hash != pred_hash:
            yield "prev_hash does not match the previous event's hash"
        if scheme in (1, 2) and pred_scheme is not None and scheme < pred_scheme:
            yield "hash scheme older than the previous event's (schemes only move forward)"


def _load_boundaries(
    conn: psycopg.Connection[Any],
    saved: Sequence[SavedAnchor],
    start_id: int,
    chunk_size: int,
    report: IntegrityReport,
) -> list[_Boundary]:
    by_id: dict[int, _Boundary] = {}
    for rows in _pages(conn, ANCHORS_PAGE, (start_id,), lambda r: (r[0],), chunk_size):
        for anchor_id, tx, pos, events, digest in rows:
            through = (int(tx), int(pos))
            by_id[anchor_id] = _Boundary(anchor_id, through, (through, events, digest), None)
    for anchor in saved:
        if anchor.anchor_id <= start_id:
            continue
        boundary = by_id.get(anchor.anchor_id)
        if boundary is None:
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    "missing from utcp.chain_anchors (anchors were deleted or rewritten)",
                    anchor_id=anchor.anchor_id,
                    checkpoint=anchor.checkpoint,
                )
            )
            by_id[anchor.anchor_id] = _Boundary(anchor.anchor_id, anchor.through, None, anchor)
            continue
        if boundary.through != anchor.through:
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    f"utcp.chain_anchors has it through {boundary.through[0]}/"
                    f"{boundary.through[1]} instead (anchors were rewritten)",
                    anchor_id=anchor.anchor_id,
                    checkpoint=anchor.checkpoint,
                )
            )
            # The saved boundary counts: the digest is recomputed up to it.
            boundary.through = anchor.through
        elif boundary.db is not None and boundary.db[1:] != (anchor.events, anchor.digest):
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    "utcp.chain_anchors holds another event count or digest under its id "
                    "(anchors were rewritten)",
                    anchor_id=anchor.anchor_id,
                    checkpoint=anchor.checkpoint,
                )
            )
        boundary.saved = anchor
    boundaries = [by_id[k] for k in sorted(by_id)]
    previous: tuple[int, int] | None = None
    for boundary in boundaries:
        if previous is not None and boundary.through <= previous:
            report.add(
                IntegrityProblem(
                    "anchor",
                    "ends at or before the previous anchor (anchors were rewritten)",
                    anchor_id=boundary.anchor_id,
                    checkpoint=f"{boundary.through[0]}/{boundary.through[1]}",
                )
            )
        previous = boundary.through
    return boundaries


def _close(boundary: _Boundary, digest: bytes, events: int, report: IntegrityReport) -> None:
    """Compare the recomputed state at ``boundary`` with the anchors."""
    checkpoint = f"{boundary.through[0]}/{boundary.through[1]}"
    if boundary.db is not None:
        report.anchors_checked += 1
        _, db_events, db_digest = boundary.db
        if db_events != events:
            report.add(
                IntegrityProblem(
                    "anchor",
                    f"covers {db_events} events from the start of the log, {events} found now",
                    anchor_id=boundary.anchor_id,
                    checkpoint=checkpoint,
                )
            )
        elif db_digest != digest:
            report.add(
                IntegrityProblem(
                    "anchor",
                    "digest does not match the events it covers",
                    anchor_id=boundary.anchor_id,
                    checkpoint=checkpoint,
                )
            )
    if boundary.saved is not None:
        report.saved_anchors_checked += 1
        saved = boundary.saved
        if saved.events != events:
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    f"covered {saved.events} events, the log has {events} up to its "
                    "checkpoint now: events were removed or added before it",
                    anchor_id=saved.anchor_id,
                    checkpoint=checkpoint,
                )
            )
        elif saved.digest != digest:
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    "digest differs from the saved one: the log up to it was changed",
                    anchor_id=saved.anchor_id,
                    checkpoint=checkpoint,
                )
            )


def verify_log(
    conn: psycopg.Connection[Any],
    saved: Sequence[SavedAnchor] = (),
    *,
    from_anchor: SavedAnchor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    limit: int = DEFAULT_PROBLEM_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> IntegrityReport:
    """Check the whole log (or what follows ``from_anchor``) as described in
    the module's docstring, on ``conn`` (autocommit, outside a transaction:
    it opens its own REPEATABLE READ, READ ONLY one). ``progress(done,
    estimated_total)`` is called after every page of events."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValidationError("chunk_size must be a positive int", field="chunk_size")
    report = IntegrityReport(limit=limit)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            _verify(
                conn,
                report,
                saved=saved,
                from_anchor=from_anchor,
                chunk_size=chunk_size,
                progress=progress,
            )
    finally:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.isolation_level = None
                conn.read_only = None
    return report


def _verify(
    conn: psycopg.Connection[Any],
    report: IntegrityReport,
    *,
    saved: Sequence[SavedAnchor],
    from_anchor: SavedAnchor | None,
    chunk_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    start = from_anchor.through if from_anchor is not None else _ZERO
    digest = from_anchor.digest if from_anchor is not None else b""
    events = from_anchor.events if from_anchor is not None else 0
    start_id = from_anchor.anchor_id if from_anchor is not None else 0
    if from_anchor is not None:
        report.from_anchor = from_anchor.anchor_id
        row = conn.execute(
            "SELECT through_tx::text, through_position, events, digest "
            "FROM utcp.chain_anchors WHERE anchor_id = %s",
            (from_anchor.anchor_id,),
        ).fetchone()
        if row is None or ((int(row[0]), int(row[1])), row[2], row[3]) != (
            from_anchor.through,
            from_anchor.events,
            from_anchor.digest,
        ):
            report.add(
                IntegrityProblem(
                    "saved_anchor",
                    "missing from utcp.chain_anchors"
                    if row is None
                    else "utcp.chain_anchors holds a different anchor under its id",
                    anchor_id=from_anchor.anchor_id,
                    checkpoint=from_anchor.checkpoint,
                )
            )
    boundaries = _load_boundaries(conn, saved, start_id, chunk_size, report)
    estimate_row = conn.execute(ESTIMATED_EVENTS).fetchone()
    estimate = int(estimate_row[0]) if estimate_row else 0
    segment = hashlib.sha256()
    index = 0
    done = 0
    for rows in _pages(
        conn, EVENTS_PAGE, (str(start[0]), start[1]), lambda r: (r[0], r[1]), chunk_size
    ):
        report.event_pages += 1
        for row in rows:
            key = (int(row[0]), row[1])
            while index < len(boundaries) and key > boundaries[index].through:
                digest = hashlib.sha256(digest + segment.digest()).digest()
                _close(boundaries[index], digest, events, report)
                segment = hashlib.sha256()
                index += 1
            computed = _hash_of(row)
            for problem in _event_problems(row, computed):
                report.add(
                    IntegrityProblem(
                        "event",
                        problem,
                        stream_id=row[3],
                        stream_version=int(row[4]),
                        position=row[1],
                    )
                )
            segment.update(computed if computed is not None else row[14])
            events += 1
            report.events_checked += 1
            if row[4] == "1":
                report.streams_checked += 1
        done += len(rows)
        if progress is not None:
            progress(done, max(estimate, done))
    while index < len(boundaries):
        digest = hashlib.sha256(digest + segment.digest()).digest()
        _close(boundaries[index], digest, events, report)
        segment = hashlib.sha256()
        index += 1
    _check_keys(conn, report, chunk_size)


def _check_keys(conn: psycopg.Connection[Any], report: IntegrityReport, chunk_size: int) -> None:
    allowed = conn.execute(CAN_READ_KEYS).fetchone()
    if not allowed or not allowed[0]:
        report.keys_checked = None
        return
    checked = 0
    for rows in _pages(conn, KEYS_PAGE, ("",), lambda r: (r[0],), chunk_size):
        for key, stream, first, last, first_id, found, found_first in rows:
            checked += 1
            span = last - first + 1
            where = f"stream {stream} v{first}" + (f"..v{last}" if last != first else "")
            if found != span:
                report.add(
                    IntegrityProblem(
                        "key",
                        f"{span - found} of the {span} events it recorded ({where}) "
                        "are missing from the log",
                        stream_id=stream,
                        stream_version=first,
                        key=key,
                    )
                )
            elif found_first != first_id:
                report.add(
                    IntegrityProblem(
                        "key",
                        f"recorded event {first_id} at {where}, the log has {found_first} there",
                        stream_id=stream,
                        stream_version=first,
                        key=key,
                    )
                )
    report.keys_checked = checked


def connect(dsn: str, settings: Settings) -> psycopg.Connection[Any]:
    """A plain connection of verify's own (autocommit), with the store's
    timeouts: every statement verify runs reads one page, so the
    ``statement_timeout`` holds whatever the log's size."""
    try:
        user_options = conninfo_to_dict(dsn).get("options")
    except psycopg.ProgrammingError:
        raise ValidationError(
            f"malformed DSN {redact_dsn(dsn)!r}", field="dsn", operation="verify"
        ) from None
    options = settings.connection_options()
    if user_options:
        options = f"{user_options} {options}"
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, round(settings.connect_timeout)),
            application_name=settings.application_name,
            options=options,
        )
    except psycopg.Error as exc:
        raise StorageUnavailable(
            f"cannot connect to PostgreSQL: {redact(first_line(exc), dsn)}",
            operation="verify",
            sqlstate=exc.sqlstate,
        ) from None
