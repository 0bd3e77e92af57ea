"""``eventstore db deploy | verify | revert | status``: the schema, through Sqitch."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import psycopg

from eventstore import EventStoreError, StorageUnavailable
from eventstore.errors import first_line
from eventstore.settings import redact
from eventstore.sqitch import Sqitch, build_target

from .common import EXIT_OK, add_dsn, add_json, dsn
from .output import count, emit, say

__all__ = ["add_parser"]

#: The Sqitch project whose changes make up the schema (sqitch.plan).
PROJECT: Final = "utcp"

# What a revert would drop: the log's events, and the changes Sqitch
# recorded (each query only once its table is known to exist).
_TABLES: Final = """
SELECT to_regclass('utcp.stored_events') IS NOT NULL, to_regclass('sqitch.changes') IS NOT NULL"""
_EVENTS: Final = "SELECT count(*) FROM utcp.stored_events"
_CHANGES: Final = "SELECT count(*) FROM sqitch.changes WHERE project = %s"


def _deployed(target_dsn: str) -> tuple[int, int]:
    """(events in the log, Sqitch changes deployed) at ``target_dsn``."""
    try:
        with psycopg.connect(target_dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(_TABLES).fetchone()
            has_log, has_registry = row if row is not None else (False, False)
            events = conn.execute(_EVENTS).fetchone() if has_log else None
            changes = conn.execute(_CHANGES, (PROJECT,)).fetchone() if has_registry else None
    except psycopg.Error as exc:
        failure = StorageUnavailable(
            f"cannot read the log before reverting: {redact(first_line(exc), target_dsn)}",
            operation="db revert",
            sqlstate=exc.sqlstate,
        )
        failure.__cause__ = type(exc)(redact(str(exc), target_dsn))
    else:
        return (int(events[0]) if events else 0, int(changes[0]) if changes else 0)
    raise failure


def _db(args: argparse.Namespace) -> int:
    target = dsn(args)
    sqitch = Sqitch()
    name = build_target(target).dbname
    capture = args.json
    record: dict[str, Any] = {"command": f"db {args.db_command}", "database": name}
    if args.db_command == "deploy":
        created = sqitch.ensure_database(target)
        if created and not args.json:
            say(f"created database {name}", sys.stderr)
        record["created"] = created
        output = sqitch.deploy(target, capture=capture)
    elif args.db_command == "verify":
        output = sqitch.verify(target, capture=capture)
    elif args.db_command == "revert":
        events, changes = _deployed(target)
        if changes == 0 and events == 0:
            message = (
                f"nothing to revert: the utcp schema is not deployed in database {name} "
                "(Sqitch has recorded none of its changes there)"
            )
            if args.json:
                emit({**record, "reverted": False, "reason": message})
            else:
                say(message)
            return EXIT_OK
        if events and not args.yes:
            raise EventStoreError(
                f"the log holds {count(events, 'event')}: a revert can drop them and their "
                "idempotency keys for good. Back up first (docs/runbook.md), then run it again "
                "with --yes",
                operation="db revert",
            )
        output = sqitch.revert(target, to=args.to, capture=capture)
        record["reverted"] = True
    else:
        output = sqitch.status(target, capture=capture)
    if args.json:
        emit({**record, "output": output.splitlines()})
    return EXIT_OK


def add_parser(commands: Any) -> None:
    db = commands.add_parser("db", help="deploy, verify, revert the schema (Sqitch)")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (
        ("deploy", "create the database if needed and deploy every change, verified"),
        ("verify", "run every deployed change's verify script"),
        ("revert", "revert changes (all, or back to --to CHANGE)"),
        ("status", "show what is deployed"),
    ):
        sub = actions.add_parser(name, help=text)
        if name == "revert":
            sub.add_argument("--to", help="revert down to this change (kept)")
            sub.add_argument(
                "--yes",
                action="store_true",
                help="revert even though the log holds events (they can be dropped for good)",
            )
        add_json(sub)
        add_dsn(sub)
        sub.set_defaults(handler=_db)
