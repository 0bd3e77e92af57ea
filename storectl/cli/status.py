"""``eventstore status``: counts, the oldest transaction, the restore
hazard; exit 1 when something needs an operator."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from eventstore import StoreStatus
from eventstore.health import needs_operator

from .common import EXIT_ERROR, EXIT_OK, add_dsn, add_json, open_store
from .output import emit, number, say, seconds, time_text

__all__ = ["add_parser"]


def _oldest_transaction(status: StoreStatus, threshold: float) -> str:
    age = status.oldest_transaction_seconds
    parts = [
        f"{label} {value}"
        for label, value in (
            ("pid", status.oldest_transaction_pid),
            ("role", status.oldest_transaction_role),
            (
                "application",
                None
                if status.oldest_transaction_application is None
                else repr(status.oldest_transaction_application),
            ),
        )
        if value is not None
    ]
    if status.oldest_transaction_state:
        parts.append(status.oldest_transaction_state)
    if age is not None and status.oldest_transaction_pid is None:
        parts.insert(0, "a prepared transaction")
    who = ", ".join(parts)
    if age is None and not who:
        return "none running"
    if age is None:
        return (
            f"age unknown ({who}): the schema's owner cannot see other roles' sessions "
            "(docs/runbook.md, 'Stalls')"
        )
    # Clamped: a transaction that began after this statement's now() reads as < 0.
    age = max(age, 0.0)
    line = f"{seconds(age)} ({who})"
    if age > threshold:
        line += (
            " -- HOLDING BACK global readers: new events stay invisible to read_all until it ends"
        )
    return line


def _status(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        status = store.status()
        threshold = store.settings.stall_threshold
    attention = needs_operator(status, threshold)
    code = EXIT_ERROR if attention else EXIT_OK
    if args.json:
        emit({**msgspec.structs.asdict(status), "needs_operator": attention})
        return code
    last_at = "-" if status.last_event_at is None else time_text(status.last_event_at)
    last = "-" if status.last_position is None else str(status.last_position)
    say(f"events:                {number(status.events)}")
    say(f"streams:               {number(status.streams)}")
    say(f"last position:         {last} (at {last_at})")
    say(f"oldest transaction:    {_oldest_transaction(status, threshold)}")
    say(f"events behind horizon: {number(status.events_behind_horizon)}")
    say(f"xid hazard:            {status.xid_hazard or 'none'}")
    # What needs an operator is said above; this line only names it.
    labels = []
    if status.xid_hazard:
        labels.append("the xid hazard")
    if len(attention) > len(labels):
        labels.append(f"readers held back longer than {seconds(threshold)}")
    say(f"needs an operator:     {'YES: ' + ', '.join(labels) if labels else 'no'}")
    return code


def add_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="counts, the oldest transaction, the restore hazard (exit 1 when something "
        "needs an operator)",
        description="Counts, the oldest transaction (which holds back the global readers), "
        "and the restore hazard. Exits 1 when something needs an operator: the restore "
        "hazard, or global readers held back longer than EVENTSTORE_STALL_THRESHOLD "
        "seconds (default 60).",
    )
    add_json(status)
    add_dsn(status)
    status.set_defaults(handler=_status)
