"""What an operator needs to see: counts, the oldest transaction holding
back the readers' horizon, and the restore hazard."""

from __future__ import annotations

from typing import Any

import msgspec

from . import sql
from .connection import Database, hazard_message

__all__ = ["StoreStatus", "needs_operator", "status"]


class StoreStatus(msgspec.Struct, frozen=True):
    """What an operator needs to see (``eventstore status``)."""

    events: int
    streams: int
    last_position: int | None
    last_event_at: Any
    #: Age of the oldest transaction in the cluster that holds back the
    #: global readers' horizon (docs/design.md §4, "Stalls"), and its backend pid
    #: (None for a prepared transaction). The age is None when the schema's
    #: owner may not see other roles' sessions (docs/runbook.md, "Stalls").
    oldest_transaction_seconds: float | None
    oldest_transaction_pid: int | None
    #: Committed events that readers cannot see yet because an older
    #: transaction is still running.
    events_behind_horizon: int
    #: Set when stored transaction ids are ahead of the cluster (a logical
    #: restore): appends are refused until it is fixed.
    xid_hazard: str | None
    #: The oldest transaction's role, application_name and state (never its
    #: query), whichever role runs status (``utcp.oldest_transaction()``).
    oldest_transaction_role: str | None = None
    oldest_transaction_application: str | None = None
    oldest_transaction_state: str | None = None


def status(db: Database) -> StoreStatus:
    """Counts, the oldest running transaction, and the restore hazard."""

    def work(_: int) -> StoreStatus:
        with db.connection() as conn:
            row = conn.execute(sql.STATUS).fetchone()
            oldest = conn.execute(sql.OLDEST_TRANSACTION).fetchone()
            hazard = conn.execute(sql.XID_HAZARD).fetchone()
        assert row is not None
        pid, role, application, state, age = oldest or (None,) * 5
        message = hazard_message(hazard)
        return StoreStatus(
            events=row[0],
            last_position=row[1],
            streams=row[2],
            last_event_at=row[3],
            oldest_transaction_seconds=age,
            oldest_transaction_pid=pid,
            events_behind_horizon=row[4],
            xid_hazard=message,
            oldest_transaction_role=role,
            oldest_transaction_application=application,
            oldest_transaction_state=state,
        )

    status: StoreStatus = db.run("status", work)
    return status


def needs_operator(status: StoreStatus, stall_threshold: float) -> list[str]:
    """What in ``status`` needs an operator, one sentence each (none: all
    is well): the restore hazard, and global readers held back for longer
    than ``stall_threshold`` seconds (``Settings.stall_threshold``)."""
    found: list[str] = []
    if status.xid_hazard:
        found.append(status.xid_hazard)
    age = status.oldest_transaction_seconds
    if age is not None and age > stall_threshold:
        who = (
            "a prepared transaction"
            if status.oldest_transaction_pid is None
            else f"the transaction of pid {status.oldest_transaction_pid}"
        )
        found.append(
            f"global readers are held back: {who} has been open for {age:.1f} s "
            f"(more than {stall_threshold:g} s); new events stay invisible to read_all "
            "until it ends (docs/runbook.md, 'Stalls')"
        )
    return found
