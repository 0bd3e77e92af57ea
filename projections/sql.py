"""SQL of the projections: read-model tables and checkpoints.

Table names are parameters (:class:`Tables`): a rebuild writes the same
rows into shadow tables, then swaps them in.
"""

from __future__ import annotations

from typing import Final, LiteralString

import msgspec
from psycopg import sql

__all__ = ["LIVE", "Tables", "shadow_tables"]

SCHEMA: Final = "utcp"


class Tables(msgspec.Struct, frozen=True):
    """The names of one set of read-model tables in schema utcp."""

    trades: str = "trades"
    positions: str = "positions"
    portfolios: str = "portfolios"

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(SCHEMA, getattr(self, name))

    def names(self) -> tuple[str, ...]:
        return (self.trades, self.positions, self.portfolios)


LIVE: Final = Tables()


def shadow_tables(suffix: str = "rebuild") -> Tables:
    return Tables(
        trades=f"trades__{suffix}",
        positions=f"positions__{suffix}",
        portfolios=f"portfolios__{suffix}",
    )


TRADE_COLUMNS: Final = (
    "trade_id",
    "portfolio_id",
    "symbol",
    "side",
    "quantity",
    "price",
    "fees",
    "executed_at",
    "order_id",
    "status",
    "event_position",
    "updated_at",
)
POSITION_COLUMNS: Final = (
    "portfolio_id",
    "symbol",
    "quantity",
    "avg_cost",
    "realized_pnl",
    "fees",
    "trade_count",
    "updated_at",
)
PORTFOLIO_COLUMNS: Final = (
    "portfolio_id",
    "name",
    "base_currency",
    "cash",
    "realized_pnl",
    "fees",
    "opened_at",
    "updated_at",
)
KEYS: Final = {
    "trades": ("trade_id",),
    "positions": ("portfolio_id", "symbol"),
    "portfolios": ("portfolio_id",),
}
COLUMNS: Final = {
    "trades": TRADE_COLUMNS,
    "positions": POSITION_COLUMNS,
    "portfolios": PORTFOLIO_COLUMNS,
}


def select_by(tables: Tables, table: str, where: LiteralString) -> sql.Composed:
    """SELECT every column of ``table`` WHERE ``where`` (a fixed fragment)."""
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])),
        table=tables.ident(table),
        where=sql.SQL(where),
    )


def upsert(tables: Tables, table: str) -> sql.Composed:
    columns = COLUMNS[table]
    keys = KEYS[table]
    return sql.SQL(
        "INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    ).format(
        table=tables.ident(table),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in columns
            if c not in keys
        ),
    )


def delete_position(tables: Tables) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} WHERE portfolio_id = %s AND symbol = %s").format(
        t=tables.ident("positions")
    )


# -- checkpoints ---------------------------------------------------------------

ENSURE_CHECKPOINT: Final = """
INSERT INTO utcp.projection_checkpoints (projection) VALUES (%s)
ON CONFLICT (projection) DO NOTHING"""

# The newest event every reader can see now (read_all's horizon): a fixed
# goal, so a catch-up ends even while writers keep appending.
HEAD: Final = """
SELECT tx_id::text || '/' || position::text
  FROM utcp.stored_events
 WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY tx_id DESC, position DESC
 LIMIT 1"""

READ_CHECKPOINT: Final = """
SELECT checkpoint_tx::text || '/' || checkpoint_position::text, events_processed
  FROM utcp.projection_checkpoints WHERE projection = %s"""

# Fenced: only moves from the checkpoint this worker read, so a worker that
# lost its lock without noticing cannot apply a batch twice.
ADVANCE_CHECKPOINT: Final = """
UPDATE utcp.projection_checkpoints
   SET checkpoint_tx = %(tx)s::xid8, checkpoint_position = %(pos)s,
       events_processed = events_processed + %(count)s,
       last_event_at = %(last_event_at)s, updated_at = now(),
       last_error = NULL, last_error_at = NULL, last_error_event = NULL
 WHERE projection = %(name)s
   AND checkpoint_tx = %(from_tx)s::xid8 AND checkpoint_position = %(from_pos)s"""

RESET_CHECKPOINT: Final = """
UPDATE utcp.projection_checkpoints
   SET checkpoint_tx = '0', checkpoint_position = 0, events_processed = 0,
       last_event_at = NULL, updated_at = now(),
       last_error = NULL, last_error_at = NULL, last_error_event = NULL
 WHERE projection = %s"""

# An operator's decision to pass over a refused event (eventstore project skip).
SKIP_DECISION: Final = """
SELECT data ->> 'reason', data ->> 'actor'
  FROM utcp.stored_events
 WHERE stream_id = %s AND type = %s AND data ->> 'event_id' = %s
 LIMIT 1"""

RECORD_ERROR: Final = """
UPDATE utcp.projection_checkpoints
   SET last_error = %s, last_error_at = now(), last_error_event = %s
 WHERE projection = %s"""

# -- locks and status ----------------------------------------------------------

# The sessions holding (granted) or queued for (not granted) a projection's
# lock, pg_advisory_lock(class, hashtext(name)): in pg_locks, classid is the
# first key, objid the second as an unsigned 32-bit number, objsubid 2.
LOCK_SESSIONS: Final = """
SELECT pid, granted FROM pg_locks
 WHERE locktype = 'advisory'
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = %(class)s::bigint::oid
   AND objid = (hashtext(%(name)s)::bigint & 4294967295)::oid
   AND objsubid = 2
 ORDER BY granted DESC, pid"""

STATUS_CHECKPOINT: Final = """
SELECT checkpoint_tx::text || '/' || checkpoint_position::text, events_processed,
       last_event_at, updated_at, last_error, last_error_at, last_error_event
  FROM utcp.projection_checkpoints WHERE projection = %s"""

# Events a reader after this checkpoint can read now (the same horizon as
# EventStore.read_all), and how old the oldest of them is.
# Lag: events a reader can see after the checkpoint, the age of the oldest,
# and committed events not yet readable (behind an older open transaction).
STATUS_LAG: Final = """
SELECT count(*) FILTER (WHERE e.tx_id < h.xmin),
       coalesce(greatest(0, extract(epoch FROM clock_timestamp()
                                    - min(e.created_at) FILTER (WHERE e.tx_id < h.xmin))),
                0)::float8,
       count(*) FILTER (WHERE e.tx_id >= h.xmin)
  FROM utcp.stored_events e, (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) h
 WHERE (e.tx_id, e.position) > (%s::xid8, %s)"""

STATUS_LOCKS: Final = """
SELECT (SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = %(class)s::bigint::oid
           AND objid = (hashtext(%(name)s)::bigint & 4294967295)::oid
           AND objsubid = 2
         LIMIT 1),
       (SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = %(class)s::bigint::oid
           AND objid = (hashtext(%(rebuild)s)::bigint & 4294967295)::oid
           AND objsubid = 2
         LIMIT 1)"""

# -- rebuilds ------------------------------------------------------------------

# The swap: the live row takes the rebuild's checkpoint and count (both are
# at the same checkpoint then), and loses any error of the old tables.
COPY_CHECKPOINT: Final = """
UPDATE utcp.projection_checkpoints AS live
   SET checkpoint_tx = rebuilt.checkpoint_tx,
       checkpoint_position = rebuilt.checkpoint_position,
       events_processed = rebuilt.events_processed,
       last_event_at = rebuilt.last_event_at, updated_at = now(),
       last_error = NULL, last_error_at = NULL, last_error_event = NULL
  FROM utcp.projection_checkpoints AS rebuilt
 WHERE live.projection = %s AND rebuilt.projection = %s"""

DELETE_CHECKPOINT: Final = "DELETE FROM utcp.projection_checkpoints WHERE projection = %s"

# A table's indexes: name and definition (to give a rebuilt table's indexes
# the names of the live table's, which are the names of the Sqitch change).
TABLE_INDEXES: Final = """
SELECT c.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = to_regclass(%s)
 ORDER BY c.relname"""

# The worker lock: one active worker per projection (projections.runner).
TRY_LOCK: Final = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
TAKE_LOCK: Final = "SELECT pg_advisory_lock(%s, hashtext(%s))"
