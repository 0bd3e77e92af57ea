"""Every SQL statement the store sends, in one place, all parameterised.

The write path is one statement: ``utcp.append_events()`` (sqitch/deploy/
append_guarded.sql) checks the events, derives the indexed columns, does the
version check, the idempotency key, the hash chain and the insert in one
round trip.
"""

from __future__ import annotations

from typing import Final

from psycopg import sql

from .checkpoint import checkpoint_sql, visible_sql

# Every argument cast to its exact type: no overload of append_events that
# someone else created with looser types (unknown, int2) can be preferred.
APPEND: Final = (
    "SELECT * FROM utcp.append_events(%s::text, %s::bigint, %s::text, %s::uuid, %s::jsonb)"
)

# Group commit (sqitch/deploy/append_group.sql): N requests in one call, one
# row per request with its own outcome. Exact types, as for APPEND.
APPEND_GROUP: Final = (
    "SELECT * FROM utcp.append_group(%s::text[], %s::bigint[], %s::text[], %s::uuid[], %s::jsonb)"
)

# Columns in StoredEvent's field order; checkpoint is "<tx_id>/<position>".
_EVENT_COLUMNS: Final = """
    position, {checkpoint}, event_id, stream_id, stream_version,
    type, {data}, {metadata}, symbol, occurred_at, created_at, prev_hash, hash"""
EVENT_COLUMNS: Final = _EVENT_COLUMNS.format(
    checkpoint=checkpoint_sql(), data="data", metadata="metadata"
)
# RawStoredEvent's: payload and metadata as the UTF-8 bytes of their JSON
# text, a bytea that psycopg's C loader hands over as bytes. (jsonb's binary
# form is the same text behind a version byte, but stripping it takes a
# Python loader per value: 135k against 174k values/s, bench/README.md.)
RAW_DATA: Final = "convert_to(data::text, 'UTF8')"
RAW_METADATA: Final = "convert_to(metadata::text, 'UTF8')"
RAW_EVENT_COLUMNS: Final = _EVENT_COLUMNS.format(
    checkpoint=checkpoint_sql(), data=RAW_DATA, metadata=RAW_METADATA
)

_READ_STREAM: Final = """
SELECT {columns}
  FROM utcp.stored_events
 WHERE stream_id = %s AND stream_version >= %s
 ORDER BY stream_version
 LIMIT %s"""
READ_STREAM: Final = _READ_STREAM.format(columns=EVENT_COLUMNS)
READ_STREAM_RAW: Final = _READ_STREAM.format(columns=RAW_EVENT_COLUMNS)

STREAM_VERSION: Final = """
SELECT coalesce(max(stream_version), 0) FROM utcp.stored_events WHERE stream_id = %s"""

# docs/design.md §4: page in (tx_id, position) order, and only through rows whose
# transaction is older than every transaction still running, so no row can
# later appear behind a reader's checkpoint.
#
# The page starts AT the checkpoint's own event (>=), without its payload:
# that first row proves the checkpoint is in this log (a checkpoint beyond a
# restored log must fail loudly, not page nothing for ever) at the cost of
# one more index entry of the same range scan. The one-row VALUES is
# flattened by the planner: the scan's bound is the parameters themselves.
_READ_ALL: Final = f"""
SELECT e.position, {checkpoint_sql("e.tx_id", "e.position")}, e.event_id, e.stream_id,
       e.stream_version, e.type,
       CASE WHEN e.position = a.pos THEN NULL ELSE {{data}} END,
       CASE WHEN e.position = a.pos THEN NULL ELSE {{metadata}} END,
       e.symbol, e.occurred_at, e.created_at, e.prev_hash, e.hash
  FROM (VALUES (%s::xid8, %s::bigint)) AS a (tx, pos)
  JOIN utcp.stored_events e ON (e.tx_id, e.position) >= (a.tx, a.pos)
 WHERE {visible_sql("e.tx_id")}
   {{types}}
 ORDER BY e.tx_id, e.position
 LIMIT %s"""
_TYPES: Final = "AND (e.type = ANY(%s) OR e.position = a.pos)"
_DECODED: Final = {"data": "e.data", "metadata": "e.metadata"}
_RAW: Final = {
    "data": "convert_to(e.data::text, 'UTF8')",
    "metadata": "convert_to(e.metadata::text, 'UTF8')",
}
READ_ALL: Final = _READ_ALL.format(types="", **_DECODED)
READ_ALL_TYPES: Final = _READ_ALL.format(types=_TYPES, **_DECODED)
READ_ALL_RAW: Final = _READ_ALL.format(types="", **_RAW)
READ_ALL_TYPES_RAW: Final = _READ_ALL.format(types=_TYPES, **_RAW)

# Why a checkpoint's event was not at the head of its page: still behind
# this server's horizon (a standby that has not replayed it yet), or gone.
CHECKPOINT_IN_LOG: Final = """
SELECT EXISTS (SELECT 1 FROM utcp.stored_events
                WHERE (tx_id, position) = (%(tx)s::xid8, %(pos)s::bigint))"""
CHECKPOINT_PROBE: Final = f"""
SELECT ({CHECKPOINT_IN_LOG}),
       pg_is_in_recovery() AND NOT {visible_sql("%(tx)s::xid8")}"""

# A wake-up hint for live readers, sent after appends commit (eventstore.notify).
NOTIFY: Final = "SELECT pg_notify(%s, '')"

# EventStore.query, the extension point for read models: their queries run
# in a transaction that the database keeps from writing anything.
READ_ONLY: Final = "SET TRANSACTION READ ONLY"

EVENTS_BY_ID: Final = """
SELECT stream_id, stream_version, position, event_id, type, data, metadata
  FROM utcp.stored_events
 WHERE event_id = ANY(%s)
 ORDER BY stream_id, stream_version"""


def find_events(
    *,
    type: bool,
    symbol: bool,
    category: bool,
    stream_id: bool,
    since: bool,
    until: bool,
    after: bool = False,
) -> sql.Composed:
    """The query behind the adapter's lists: filters on the indexed columns
    (type, symbol, category, stream) and business time, in time order.
    Only the filters in use are in the SQL, so the planner sees plain
    equalities and ranges and picks the matching index. ``after``: the
    page starts strictly after (``after_at``, ``after_position``) in
    (occurred_at, position) order (eventstore.paging); the plain range on
    occurred_at beside the row comparison lets the planner bound the scan."""
    wheres: list[sql.Composable] = []
    for used, clause in (
        (type, "type = %(type)s"),
        (symbol, "symbol = %(symbol)s"),
        (category, "category = %(category)s"),
        (stream_id, "stream_id = %(stream_id)s"),
        (since, "occurred_at >= %(since)s"),
        (until, "occurred_at < %(until)s"),
        (after, "occurred_at >= %(after_at)s"),
        (after, "(occurred_at, position) > (%(after_at)s, %(after_position)s)"),
    ):
        if used:
            wheres.append(sql.SQL(clause))
    where = sql.SQL(" AND ").join(wheres) if wheres else sql.SQL("true")
    return sql.SQL(
        "SELECT {cols} FROM utcp.stored_events WHERE {where} "
        "ORDER BY occurred_at, position LIMIT %(limit)s"
    ).format(cols=sql.SQL(EVENT_COLUMNS), where=where)


# Schema present and deployed far enough for this code.
SCHEMA_CHECK: Final = """
SELECT to_regclass('utcp.stored_events') IS NOT NULL,
       to_regclass('utcp.idempotency_keys') IS NOT NULL,
       to_regprocedure('utcp.append_events(text, bigint, text, uuid, jsonb)') IS NOT NULL"""

# The group append function, callable by this session (sqitch/deploy/
# append_group.sql): without it (a schema deployed before that change, or a
# role without the grant) appends go through utcp.append_events().
HAS_APPEND_GROUP: Final = """
SELECT coalesce(has_function_privilege(
           to_regprocedure('utcp.append_group(text[], bigint[], text[], uuid[], jsonb)'),
           'EXECUTE'), false)"""

# Each type's business-time field as the database derives it (the rest:
# the payload's occurred_at).
TIME_FIELDS: Final = "SELECT type, time_field FROM utcp.event_time_fields"

# A logical restore into a new cluster leaves stored transaction ids ahead
# of the cluster's counter (docs/design.md §4, "Restores").
XID_HAZARD: Final = """
SELECT max(tx_id)::text, pg_snapshot_xmax(pg_current_snapshot())::text,
       max(tx_id) >= pg_snapshot_xmax(pg_current_snapshot())
  FROM utcp.stored_events"""

STATUS: Final = f"""
SELECT (SELECT count(*) FROM utcp.stored_events),
       (SELECT max(position) FROM utcp.stored_events),
       (SELECT count(DISTINCT stream_id) FROM utcp.stored_events),
       (SELECT max(created_at) FROM utcp.stored_events),
       (SELECT count(*) FROM utcp.stored_events WHERE NOT {visible_sql()})"""

# The transaction holding back the readers' horizon, whoever owns it
# (pg_stat_activity hides other roles' transactions from a non-superuser):
# pid, role, application_name, state, age in seconds.
OLDEST_TRANSACTION: Final = """
SELECT pid, role_name, application_name, state, age_seconds FROM utcp.oldest_transaction()"""

# Tamper evidence: recompute every event's hash from its stored fields, under
# the event's own scheme (hash_version: 1 utcp.event_content, 2
# utcp.event_hash_v2; a chain may pass from one to the other), and check each
# stream's chain (versions 1..n without gaps, each prev_hash the previous
# event's hash). Returns one row per broken event.
VERIFY_CHAIN: Final = """
WITH checked AS (
    SELECT stream_id, stream_version, position, hash, prev_hash, hash_version,
           hash = CASE hash_version
               WHEN 1 THEN pg_catalog.sha256(
                   coalesce(prev_hash, '\\x'::bytea) || utcp.event_content(
                       event_id, stream_id, stream_version, type, data, metadata, symbol,
                       occurred_at, created_at))
               WHEN 2 THEN utcp.event_hash_v2(
                   prev_hash, event_id, stream_id, stream_version, type, data, metadata, symbol,
                   occurred_at, created_at, recorded_by)
           END IS TRUE AS hash_ok,
           lag(hash) OVER w AS expected_prev,
           lag(stream_version, 1, 0::bigint) OVER w AS previous_version,
           lag(hash_version, 1, hash_version) OVER w AS previous_scheme
      FROM utcp.stored_events
     WHERE (%(stream_id)s::text IS NULL OR stream_id = %(stream_id)s)
    WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version)
)
SELECT stream_id, stream_version, position,
       CASE WHEN stream_version <> previous_version + 1 THEN 'version gap before this event'
            WHEN NOT hash_ok THEN 'hash does not match the event''s content'
            WHEN prev_hash IS DISTINCT FROM expected_prev
            THEN 'prev_hash does not match the previous event''s hash'
            ELSE 'hash scheme older than the previous event''s (schemes only move forward)' END
  FROM checked
 WHERE NOT hash_ok
    OR stream_version <> previous_version + 1
    OR prev_hash IS DISTINCT FROM expected_prev
    OR hash_version < previous_scheme
 ORDER BY stream_id, stream_version
 LIMIT %(limit)s"""

VERIFY_COUNT: Final = """
SELECT count(*), count(DISTINCT stream_id) FROM utcp.stored_events
 WHERE (%(stream_id)s::text IS NULL OR stream_id = %(stream_id)s)"""

# Anchors (sqitch/deploy/chain_anchors.sql): digests of the global log.
# utcp.anchor_log() refuses any other isolation level (a stale snapshot
# would chain the new anchor onto an old one), and waits for another
# anchorer's lock no longer than lock_timeout.
ANCHOR_ISOLATION: Final = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
SET_LOCK_TIMEOUT: Final = "SELECT pg_catalog.set_config('lock_timeout', %s, true)"
ANCHOR: Final = f"""
SELECT anchor_id, {checkpoint_sql("through_tx", "through_position")}, events, digest, created_at
  FROM utcp.anchor_log()"""

# Recompute every anchor from the events it covers; one row per mismatch.
VERIFY_ANCHORS: Final = f"""
WITH a AS (
    SELECT anchor_id, through_tx, through_position, events, digest,
           lag(through_tx, 1, '0'::xid8) OVER w AS after_tx,
           lag(through_position, 1, 0::bigint) OVER w AS after_position,
           lag(events, 1, 0::bigint) OVER w AS events_before,
           lag(digest) OVER w AS digest_before
      FROM utcp.chain_anchors
    WINDOW w AS (ORDER BY anchor_id)
)
SELECT a.anchor_id, {checkpoint_sql("a.through_tx", "a.through_position")},
       CASE WHEN d.events <> a.events - a.events_before
            THEN format('covered %%s events, %%s found now', a.events - a.events_before, d.events)
            ELSE 'digest does not match the events it covers' END
  FROM a CROSS JOIN LATERAL utcp.log_digest(
           a.after_tx, a.after_position, a.through_tx, a.through_position) d
 WHERE d.events <> a.events - a.events_before
    OR pg_catalog.sha256(coalesce(a.digest_before, '\\x'::bytea) || d.digest) <> a.digest
 ORDER BY a.anchor_id
 LIMIT %(limit)s"""

ANCHOR_COUNT: Final = "SELECT count(*) FROM utcp.chain_anchors"
