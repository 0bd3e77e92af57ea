"""SQL of the projections: read-model tables and checkpoints.

Table names are parameters (:class:`Tables`): a rebuild writes the same
rows into shadow tables, then swaps them in.
"""

from __future__ import annotations

from typing import Final, LiteralString

import msgspec
from psycopg import sql

from eventstore import checkpoint_sql, visible_sql

from .models import Portfolio, Position, TradeRow

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


TRADE_COLUMNS: Final = TradeRow.__struct_fields__
POSITION_COLUMNS: Final = Position.__struct_fields__
PORTFOLIO_COLUMNS: Final = Portfolio.__struct_fields__
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
HEAD: Final = f"""
SELECT {checkpoint_sql()}
  FROM utcp.stored_events
 WHERE {visible_sql()}
 ORDER BY tx_id DESC, position DESC
 LIMIT 1"""

CHECKPOINT_TEXT: Final = checkpoint_sql("checkpoint_tx", "checkpoint_position")

READ_CHECKPOINT: Final = f"""
SELECT {CHECKPOINT_TEXT}, events_processed
  FROM utcp.projection_checkpoints WHERE projection = %s"""

# Fenced: only moves from the checkpoint this worker read, and only while
# this session still holds the projection's lease, so a worker that lost
# its lease without noticing cannot apply a batch.
ADVANCE_CHECKPOINT: Final = """
UPDATE utcp.projection_checkpoints
   SET checkpoint_tx = %(tx)s::xid8, checkpoint_position = %(pos)s,
       events_processed = events_processed + %(count)s,
       last_event_at = %(last_event_at)s, updated_at = now(),
       last_error = NULL, last_error_at = NULL, last_error_event = NULL
 WHERE projection = %(name)s
   AND checkpoint_tx = %(from_tx)s::xid8 AND checkpoint_position = %(from_pos)s
   AND EXISTS (SELECT FROM utcp.projection_leases
                WHERE projection = %(name)s AND holder_pid = pg_backend_pid()
                  AND holder_nonce = %(nonce)s)"""

RESET_CHECKPOINT: Final = """
UPDATE utcp.projection_checkpoints
   SET checkpoint_tx = '0', checkpoint_position = 0, events_processed = 0,
       last_event_at = NULL, updated_at = now(),
       last_error = NULL, last_error_at = NULL, last_error_event = NULL
 WHERE projection = %s"""

# An operator's decisions to pass over refused events (eventstore project
# skip), by event id. Honoured only when the role that recorded it is, now,
# a superuser or a member of utcp_operator; a role dropped since, and a
# decision recorded before roles were recorded (recorded_by NULL), are not
# (docs/runbook.md: "Skip decisions").
SKIP_DECISIONS: Final = """
SELECT DISTINCT ON (e.data ->> 'event_id')
       e.data ->> 'event_id', e.data ->> 'reason', e.data ->> 'actor', e.recorded_by
  FROM utcp.stored_events e
  JOIN pg_catalog.pg_roles r ON r.rolname = e.recorded_by
 WHERE e.stream_id = %s AND e.type = %s AND e.data ->> 'event_id' = ANY(%s::text[])
   AND (r.rolsuper OR pg_catalog.pg_has_role(r.oid, 'utcp_operator', 'MEMBER'))
 ORDER BY e.data ->> 'event_id', e.position"""

# (reason, actor) of the decision for one event, as SKIP_DECISIONS honours it.
SKIP_DECISION: Final = """
SELECT e.data ->> 'reason', e.data ->> 'actor'
  FROM utcp.stored_events e
  JOIN pg_catalog.pg_roles r ON r.rolname = e.recorded_by
 WHERE e.stream_id = %s AND e.type = %s AND e.data ->> 'event_id' = %s
   AND (r.rolsuper OR pg_catalog.pg_has_role(r.oid, 'utcp_operator', 'MEMBER'))
 ORDER BY e.position
 LIMIT 1"""

# The event a skip decision names (eventstore project skip).
EVENT_BY_ID: Final = """
SELECT stream_id, stream_version, position, type
  FROM utcp.stored_events WHERE event_id = %s"""

# The role recording a skip decision, and whether its decisions count
# (the same rule as SKIP_DECISIONS).
SKIP_ROLE: Final = """
SELECT r.rolname::text, r.rolsuper OR pg_catalog.pg_has_role(r.oid, 'utcp_operator', 'MEMBER')
  FROM pg_catalog.pg_roles r WHERE r.rolname = session_user"""

RECORD_ERROR: Final = """
UPDATE utcp.projection_checkpoints
   SET last_error = %s, last_error_at = now(), last_error_event = %s
 WHERE projection = %s"""

# -- the lease and status ------------------------------------------------------

# One active worker per projection: the lease row (utcp.projection_leases,
# only utcp_projector writes it). A session is alive while it holds the
# advisory lock on its own random nonce and its backend is the one that
# started when it claimed (utcp.projection_session_alive): a session that
# gets a dead holder's pid again cannot pass for it.
ENSURE_LEASE: Final = """
INSERT INTO utcp.projection_leases (projection) VALUES (%s)
ON CONFLICT (projection) DO NOTHING"""

# Liveness of a session: the advisory lock on its nonce (random, 62 bits).
TAKE_NONCE: Final = "SELECT pg_try_advisory_lock(%s::bigint)"

# Become the holder: only when the holder is gone and no live session but
# this one has asked to take over (a standby never jumps that queue).
CLAIM_LEASE: Final = """
UPDATE utcp.projection_leases
   SET holder_pid = pg_backend_pid(), holder_nonce = %(nonce)s,
       holder_started = (SELECT backend_start FROM pg_stat_activity
                          WHERE pid = pg_backend_pid()),
       requested_pid = NULL, requested_nonce = NULL, requested_started = NULL,
       since = clock_timestamp()
 WHERE projection = %(name)s
   AND NOT utcp.projection_session_alive(holder_pid, holder_nonce, holder_started)
   AND (NOT utcp.projection_session_alive(requested_pid, requested_nonce, requested_started)
        OR (requested_pid = pg_backend_pid() AND requested_nonce = %(nonce)s))"""

# Queue to take over (a rebuild, `catch-up --wait`): when no other live
# session is queued already.
REQUEST_LEASE: Final = """
UPDATE utcp.projection_leases
   SET requested_pid = pg_backend_pid(), requested_nonce = %(nonce)s,
       requested_started = (SELECT backend_start FROM pg_stat_activity
                             WHERE pid = pg_backend_pid())
 WHERE projection = %(name)s
   AND ((requested_pid = pg_backend_pid() AND requested_nonce = %(nonce)s)
        OR NOT utcp.projection_session_alive(requested_pid, requested_nonce,
                                             requested_started))"""

WITHDRAW_REQUEST: Final = """
UPDATE utcp.projection_leases
   SET requested_pid = NULL, requested_nonce = NULL, requested_started = NULL
 WHERE projection = %(name)s AND requested_pid = pg_backend_pid()
   AND requested_nonce = %(nonce)s"""

HOLDS_LEASE: Final = """
SELECT EXISTS (SELECT FROM utcp.projection_leases
                WHERE projection = %(name)s AND holder_pid = pg_backend_pid()
                  AND holder_nonce = %(nonce)s)"""

# A live session other than this one is queued to take over.
PAUSE_REQUESTED: Final = """
SELECT EXISTS (SELECT FROM utcp.projection_leases
                WHERE projection = %(name)s AND requested_pid <> pg_backend_pid()
                  AND utcp.projection_session_alive(requested_pid, requested_nonce,
                                                    requested_started))"""

# The holder hands the lease to the live session queued for it.
HAND_OVER: Final = """
UPDATE utcp.projection_leases
   SET holder_pid = requested_pid, holder_nonce = requested_nonce,
       holder_started = requested_started,
       requested_pid = NULL, requested_nonce = NULL, requested_started = NULL,
       since = clock_timestamp()
 WHERE projection = %(name)s AND holder_pid = pg_backend_pid() AND holder_nonce = %(nonce)s
   AND requested_pid <> pg_backend_pid()
   AND utcp.projection_session_alive(requested_pid, requested_nonce, requested_started)"""

# Let go of the lease, and of a request to take it over.
RELEASE_LEASE: Final = """
UPDATE utcp.projection_leases
   SET holder_pid = CASE WHEN holder_pid = pg_backend_pid() AND holder_nonce = %(nonce)s
                         THEN NULL ELSE holder_pid END,
       holder_nonce = CASE WHEN holder_pid = pg_backend_pid() AND holder_nonce = %(nonce)s
                           THEN NULL ELSE holder_nonce END,
       requested_pid = CASE WHEN requested_pid = pg_backend_pid() AND requested_nonce = %(nonce)s
                            THEN NULL ELSE requested_pid END,
       requested_nonce = CASE WHEN requested_pid = pg_backend_pid()
                               AND requested_nonce = %(nonce)s
                              THEN NULL ELSE requested_nonce END,
       holder_started = CASE WHEN holder_pid = pg_backend_pid() AND holder_nonce = %(nonce)s
                             THEN NULL ELSE holder_started END,
       requested_started = CASE WHEN requested_pid = pg_backend_pid()
                                 AND requested_nonce = %(nonce)s
                                THEN NULL ELSE requested_started END
 WHERE projection = %(name)s
   AND ((holder_pid = pg_backend_pid() AND holder_nonce = %(nonce)s)
        OR (requested_pid = pg_backend_pid() AND requested_nonce = %(nonce)s))"""

# The live holder and requester of a lease ("holder"/"requester", pid,
# role, application, state, since), for status and messages; the columns
# are runner.LeaseHolder's fields (rows mapped by name).
LEASE_HOLDERS: Final = """
SELECT role, pid, usename, application_name, state, since
  FROM utcp.projection_lease_holders(%s::text)"""

STATUS_CHECKPOINT: Final = f"""
SELECT {CHECKPOINT_TEXT}, events_processed,
       last_event_at, updated_at, last_error, last_error_at, last_error_event
  FROM utcp.projection_checkpoints WHERE projection = %s"""

# Lag: events a reader after this checkpoint can read now (the same
# horizon as EventStore.read_all), the age of the oldest, and committed
# events not yet readable (behind an older open transaction).
STATUS_LAG: Final = f"""
SELECT count(*) FILTER (WHERE {visible_sql("e.tx_id")}),
       coalesce(greatest(0, extract(epoch FROM clock_timestamp()
                                    - min(e.created_at) FILTER (WHERE {visible_sql("e.tx_id")}))),
                0)::float8,
       count(*) FILTER (WHERE NOT {visible_sql("e.tx_id")})
  FROM utcp.stored_events e
 WHERE (e.tx_id, e.position) > (%s::xid8, %s)"""

# -- rebuilds ------------------------------------------------------------------

DELETE_CHECKPOINT: Final = "DELETE FROM utcp.projection_checkpoints WHERE projection = %s"

# The DDL of a rebuild, done by functions owned by the schema's owner (the
# projector creates and owns nothing in utcp): shadow tables for a suffix,
# the swap (live → old, shadow → live, checkpoint copied, old dropped,
# indexes renamed to the canonical names), and dropping shadow tables.
PREPARE_SHADOW: Final = "SELECT utcp.rebuild_prepare(%s::text)"
SWAP_SHADOW: Final = "SELECT utcp.rebuild_swap(%s::text, %s::text, %s::text)"
DISCARD_SHADOW: Final = "SELECT utcp.rebuild_discard(%s::text)"

# The sessions holding a lock on the live or the shadow tables (what keeps
# a rebuild's DDL waiting): pid, role, application, state, lock modes, and
# how long their transaction has been open.
TABLE_LOCKERS: Final = """
SELECT pid, usename, application_name, state, lock_modes, xact_seconds
  FROM utcp.projection_table_lockers(%s::text)"""


# -- reading the read models (projections/queries.py) ------------------------

POSITIONS: Final = sql.SQL(
    "SELECT {} FROM utcp.positions WHERE portfolio_id = %s ORDER BY symbol"
).format(sql.SQL(", ").join(map(sql.Identifier, POSITION_COLUMNS)))
PORTFOLIO: Final = sql.SQL("SELECT {} FROM utcp.portfolios WHERE portfolio_id = %s").format(
    sql.SQL(", ").join(map(sql.Identifier, PORTFOLIO_COLUMNS))
)
