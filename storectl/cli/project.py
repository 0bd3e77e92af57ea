"""``eventstore project catch-up | run | rebuild | skip | status``: the
projections, through the library's worker (projections/worker.py), skip
decisions (projections/skip.py), rebuild and status."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Final

import msgspec

from projections.rebuild import PROJECTIONS, RebuildReport, rebuild
from projections.skip import skip_event
from projections.status import needs_operator, projection_status
from projections.worker import DEFAULT_LOCK_TIMEOUT, catch_up, run_worker

from .common import (
    EXIT_DIFFERENCES,
    EXIT_ERROR,
    EXIT_OK,
    add_dsn,
    add_json,
    configure_logging,
    dsn,
    open_store,
    positive_float,
    positive_int,
)
from .output import cell, count, emit, number, say, seconds, time_text
from .progress import ProgressDisplay
from .signals import GracefulStop, handling_signals, interrupt

__all__ = ["add_parser"]

_PHASES: Final = {
    "pause": "waiting for the live worker to pause",
    "sync": "live worker paused; bringing the live and rebuilt tables to one checkpoint",
    "compare": "comparing the live and the rebuilt tables",
    "swap": "swapping the rebuilt tables in (one transaction)",
}


def _catch_up(args: argparse.Namespace) -> int:
    stop = GracefulStop()
    display = ProgressDisplay("catch-up")
    with handling_signals(stop), open_store(args) as store:
        result = catch_up(
            store,
            dsn(args),
            batch_size=args.batch_size,
            wait=args.wait,
            lock_timeout=args.lock_timeout,
            stop=stop.event,
            progress=None if args.json else display.update,  # --json: JSON lines only
        )
    if not args.json:
        if not result.stopped:
            display.total = display.done  # all of it, whatever the estimate said
        display.finish()
    what = "stopped" if result.stopped else "caught up"
    if args.json:
        emit(result)
    else:
        say(f"{what}: {count(result.applied, 'event')} applied; checkpoint {result.checkpoint}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO, timestamps=True, as_json=args.json
    )
    stop = GracefulStop()
    with handling_signals(stop), open_store(args) as store:
        run_worker(
            store,
            dsn(args),
            stop.event,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
        )
    return EXIT_OK


def _skip(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        decision = skip_event(store, args.name, args.event_id, reason=args.reason, actor=args.actor)
    if args.json:
        emit(decision)
        return EXIT_OK
    if not decision.recorded:
        say(f"already decided by {decision.actor}: {decision.reason}")
        return EXIT_OK
    say(
        f"recorded: projection {decision.projection!r} passes over event {decision.event_id} "
        f"({decision.event})"
    )
    say("          if its rules refuse it; it never drops an event they accept.")
    if not decision.stopped_here:
        say("          (the projection is not stopped at this event now)")
    say("next:     eventstore project catch-up, or restart `eventstore project run`")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        status = projection_status(store, args.name)
    attention = needs_operator(status)
    code = EXIT_ERROR if attention else EXIT_OK
    if args.json:
        emit({**msgspec.structs.asdict(status), "needs_operator": attention})
        return code
    lag = (
        "caught up"
        if status.lag_events == 0
        else f"{count(status.lag_events, 'event')}, {seconds(status.lag_seconds)} behind"
    )
    say(f"projection:        {status.name}")
    say(f"checkpoint:        {status.checkpoint}")
    if not status.checkpoint_in_log:
        say(
            "                   names no event in this log (restored to a point before it?): "
            "the projection cannot go on from there; rebuild it: eventstore project rebuild"
        )
    say(f"events processed:  {number(status.events_processed)}")
    say(f"lag:               {lag}")
    if status.waiting_events:
        say(
            f"waiting:           {count(status.waiting_events, 'committed event')} behind an "
            "open transaction (see `eventstore status`)"
        )
    if status.active_worker is not None:
        say(f"worker:            active ({status.active_worker.describe()})")
    elif status.lag_events:
        say("worker:            NONE ACTIVE, and events wait (start one: eventstore project run)")
    else:
        say("worker:            none active (start one: eventstore project run)")
    if status.rebuild_pid is not None:
        say(f"rebuild:           in progress (pid {status.rebuild_pid})")
    last = "-" if status.last_event_at is None else time_text(status.last_event_at)
    say(f"last event at:     {last}")
    if status.last_error is None:
        say("last error:        none")
    else:
        at = "-" if status.last_error_at is None else time_text(status.last_error_at)
        say(f"last error:        {status.last_error}")
        say(f"                   at {at}, event {status.last_error_event}")
        say("                   the projection is stopped before that event")
        say(
            "                   fix the rules, or pass over it: eventstore project skip "
            f"{status.last_error_event} --reason '...'"
        )
    say(f"needs an operator: {'YES' if attention else 'no'}")
    return code


def _row_text(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={cell(v)}" for k, v in row.items())


def _rebuild(args: argparse.Namespace) -> int:
    err = sys.stderr
    display = ProgressDisplay("rebuild")
    phase = ""

    def progress(now: str, done: int, total: int) -> None:
        nonlocal phase
        if now == "rebuild" and phase in ("", "rebuild"):
            phase = now
            display.update(done, total)
            return
        if now != phase and now in _PHASES:
            if phase == "rebuild":
                display.finish()
            phase = now
            say(f"rebuild: {_PHASES[now]}", err)
            err.flush()

    with handling_signals(interrupt), open_store(args) as store:
        report = rebuild(
            store,
            dsn(args),
            args.name,
            progress=None if args.json else progress,  # --json: JSON lines only
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            lock_timeout=args.lock_timeout,
        )
    code = EXIT_OK if report.ok else EXIT_DIFFERENCES
    if args.json:
        emit({**msgspec.structs.asdict(report), "ok": report.ok})
    else:
        _print_rebuild(report)
    return code


def _print_rebuild(report: RebuildReport) -> None:
    rows = ", ".join(f"{table} {number(n)}" for table, n in report.rows.items())
    say(
        f"rebuilt projection {report.name!r} from {count(report.events, 'event')}, at "
        f"checkpoint {report.checkpoint}: {rows} rows ({seconds(report.seconds)}; "
        f"live worker paused {seconds(report.paused_seconds)})"
    )
    if report.live_error is not None:
        say(f"NOT COMPARED: the live projection cannot reach the checkpoint: {report.live_error}")
    elif not report.differences:
        say("no differences: the live tables match the rebuild row for row")
    else:
        rows_differ = (
            "1 row differs"
            if len(report.differences) == 1
            else (f"{number(len(report.differences))} rows differ")
        )
        say(
            f"DIFFERENCES: {rows_differ} between the live and the rebuilt tables at "
            f"checkpoint {report.checkpoint}:"
        )
        for diff in report.differences:
            key = ", ".join(f"{k}={v!r}" for k, v in diff.key.items())
            say(f"  {diff.table} ({key}):")
            if diff.live is None:
                say("      missing from live; rebuilt: " + _row_text(diff.rebuilt or {}))
            elif diff.rebuilt is None:
                say("      only in live (not in the rebuild): " + _row_text(diff.live))
            else:
                for column in diff.columns():
                    say(
                        f"      {column}: live {cell(diff.live[column])}  "
                        f"rebuilt {cell(diff.rebuilt[column])}"
                    )
    if report.swapped:
        if report.ok:
            say("swapped: the rebuilt tables are live")
        elif report.live_error is not None:
            say(
                "swapped anyway: the rebuilt tables (the whole log under the current rules) "
                "are live now, in place of a live projection that was stopped"
            )
        else:
            say(
                "swapped anyway: the rebuilt tables (the whole log under the current rules) "
                "are live now; the rows above were replaced"
            )
    else:
        say("dry run: nothing swapped, the live tables are unchanged")


_REBUILD_HELP: Final = f"""\
Rebuild a projection from the start of the log without downtime.

The rebuilt tables are filled in shadow tables while the live worker keeps
running and readers keep reading the live tables. Then the live worker is
paused (it steps back after its current batch; --lock-timeout bounds the
wait), both sets of tables are brought to the same checkpoint and compared
row by row, every column, and every differing row is printed: a difference
means a bug, a changed rule or an edited live table. Unless --dry-run, the
rebuilt tables are then swapped in, in one transaction (readers see the old
tables or the new ones, never an empty or half-built one), EVEN WHEN ROWS
DIFFER: the rebuild is the log under the current rules. Use --dry-run to
see the differences first. On an error nothing is swapped and the shadow
tables are removed.

exit status: 0 no differences; {EXIT_DIFFERENCES} rows differed (printed; swapped unless
--dry-run); 1 error (nothing swapped).
"""


def add_parser(commands: Any) -> None:
    names = sorted(PROJECTIONS)
    project = commands.add_parser(
        "project", help="projections (trades, positions, portfolios): workers, rebuild, status"
    )
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")

    catch_up_parser = actions.add_parser(
        "catch-up",
        help="apply every event committed when it starts, then exit",
        description="Apply every event committed when it starts to the projection, then exit 0 "
        "(events appended meanwhile are left for the next catch-up or a `project run` worker). "
        "Fails at once if a worker is active, unless --wait (which pauses it while this runs).",
    )
    catch_up_parser.add_argument("--batch-size", type=positive_int, default=500, metavar="N")
    catch_up_parser.add_argument(
        "--wait",
        action="store_true",
        help="if a worker is active, ask it to step back (up to --lock-timeout) and catch up here",
    )
    catch_up_parser.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="S",
        help=f"with --wait: seconds to wait for the lock (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    add_json(catch_up_parser)
    add_dsn(catch_up_parser)
    catch_up_parser.set_defaults(handler=_catch_up)

    run = actions.add_parser(
        "run",
        help="the long-running worker (standby while another is active)",
        description="Keep the projection up to date: wakes on new events (LISTEN/NOTIFY) and "
        "polls anyway. With another worker active it waits as a standby and takes over when "
        "that one stops; after a lost connection it goes back to standby. SIGTERM or SIGINT "
        "stops it after the current batch (exit 0); an event it cannot apply, missing rights "
        "or a missing schema stop it with exit 1. Its log lines (stderr) carry UTC timestamps "
        "(--json: JSON lines with time, level and message).",
    )
    run.add_argument("--batch-size", type=positive_int, default=500, metavar="N")
    run.add_argument(
        "--poll-interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds between polls when no notification comes (default: 1)",
    )
    run.add_argument("--verbose", action="store_true", help="log a line per batch applied")
    add_json(run)
    add_dsn(run)
    run.set_defaults(handler=_run)

    rebuild_parser = actions.add_parser(
        "rebuild",
        help="rebuild from the start of the log, compare, swap in (no downtime)",
        description=_REBUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rebuild_parser.add_argument(
        "name",
        nargs="?",
        default="trading",
        choices=names,
        metavar="NAME",
        help="the projection (default: trading)",
    )
    rebuild_parser.add_argument(
        "--dry-run", action="store_true", help="rebuild and compare, but do not swap"
    )
    rebuild_parser.add_argument("--batch-size", type=positive_int, default=1000, metavar="N")
    rebuild_parser.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the live worker to pause (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    add_json(rebuild_parser)
    add_dsn(rebuild_parser)
    rebuild_parser.set_defaults(handler=_rebuild)

    skip = actions.add_parser(
        "skip",
        help="pass over one event the projection refuses (recorded in the log)",
        description="Record, in the log (a ProjectionEventSkipped event in "
        "projection-NAME), that projection NAME passes over event EVENT_ID when its rules "
        "refuse it. Only a member of utcp_operator decides. Live workers and every rebuild "
        "make the same decision; an event the rules accept is never dropped. Then run "
        "`eventstore project catch-up` or restart the worker.",
    )
    skip.add_argument("event_id", metavar="EVENT_ID", help="the refused event's id (see status)")
    skip.add_argument("--reason", required=True, help="why, for the audit trail")
    skip.add_argument(
        "--actor",
        default=os.environ.get("USER") or "operator",
        help="who decides (default: $USER)",
    )
    skip.add_argument(
        "--name", default="trading", choices=names, help="the projection (default: trading)"
    )
    add_json(skip)
    add_dsn(skip)
    skip.set_defaults(handler=_skip)

    status = actions.add_parser(
        "status",
        help="checkpoint, lag, active worker, last error (exit 1 when it needs an operator)",
        description="Checkpoint, lag, active worker and last error. Exits 1 when the "
        "projection needs an operator: an error stopped it, its checkpoint names no event "
        "in the log, or events wait and no worker is active.",
    )
    status.add_argument(
        "name",
        nargs="?",
        default="trading",
        choices=names,
        metavar="NAME",
        help="the projection (default: trading)",
    )
    add_json(status)
    add_dsn(status)
    status.set_defaults(handler=_status)
