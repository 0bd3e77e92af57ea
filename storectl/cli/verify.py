"""``eventstore verify | anchor``: tamper evidence."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec
import psycopg

from eventstore import EventStoreError, integrity
from eventstore.connection import map_error

from .common import (
    EXIT_ERROR,
    EXIT_OK,
    add_dsn,
    add_json,
    cli_settings,
    dsn,
    open_store,
    positive_int,
)
from .output import count, emit, say
from .progress import ProgressDisplay

__all__ = ["add_parser"]


def _verify(args: argparse.Namespace) -> int:
    if args.stream is None:
        return _verify_log(args)
    if args.anchor or args.from_anchor:
        raise EventStoreError(
            "--anchor and --from-anchor check the whole log: leave out --stream",
            operation="verify",
        )
    with open_store(args) as store:
        if store.stream_version(args.stream) == 0:
            raise EventStoreError(
                f"no stream {args.stream} in the log: nothing was ever appended to it, so "
                "there is no chain to verify",
                operation="verify",
                stream_id=args.stream,
            )
        report = store.verify_chain(args.stream)
    code = EXIT_OK if report.ok else EXIT_ERROR
    if args.json:
        emit({**msgspec.structs.asdict(report), "ok": report.ok})
        return code
    scope = f"stream {args.stream}"
    counts = f"{count(report.events_checked, 'event')}"
    if report.ok:
        say(f"ok: {scope}, {counts}, every hash and chain link checks out")
        return code
    for problem in report.problems:
        say(
            f"  {problem.position:>6}  {problem.stream_id} v{problem.stream_version}  "
            f"{problem.problem}"
        )
    for bad in report.anchor_problems:
        say(f"  anchor #{bad.anchor_id} (through {bad.checkpoint})  {bad.problem}")
    found = len(report.problems) + len(report.anchor_problems)
    say(f"PROBLEMS: {count(found, 'problem')} in {scope} ({counts} checked)")
    return code


def _verify_log(args: argparse.Namespace) -> int:
    """The whole log, recomputed here (eventstore/integrity.py): no function
    of the database is trusted; saved anchors prove the past unchanged."""
    saved = integrity.load_saved_anchors(args.anchor or ())
    start: integrity.SavedAnchor | None = None
    if args.from_anchor:
        start = integrity.load_saved_anchors([args.from_anchor])[-1]
    target = dsn(args)
    display = ProgressDisplay("verify") if sys.stderr.isatty() and not args.json else None
    with integrity.connect(target, cli_settings()) as conn:
        try:
            report = integrity.verify_log(
                conn,
                saved,
                from_anchor=start,
                chunk_size=args.chunk_size,
                progress=display.update if display is not None else None,
            )
        except psycopg.Error as exc:
            raise map_error(exc, "verify") from exc
        finally:
            if display is not None:
                display.finish()
    if report.keys_checked is None:
        note = (
            "idempotency keys not checked: this role may not read utcp.idempotency_keys "
            "(connect as a member of utcp_operator)"
        )
        if args.json:
            emit({"note": note}, sys.stderr)
        else:
            say(f"eventstore: note: {note}", sys.stderr)
    code = EXIT_OK if report.ok else EXIT_ERROR
    if args.json:
        for problem in report.problems:
            emit(problem.record())
        emit(report.summary())
        return code
    scope = "the whole log"
    if start is not None:
        scope = f"the log after saved anchor #{start.anchor_id} (through {start.checkpoint})"
    counts = (
        f"{count(report.events_checked, 'event')} in {count(report.streams_checked, 'stream')}, "
        f"{count(report.anchors_checked, 'anchor')}"
    )
    if saved:
        counts += f", {count(report.saved_anchors_checked, 'saved anchor')}"
    if report.keys_checked is not None:
        counts += f", {count(report.keys_checked, 'idempotency key')}"
    if report.ok:
        say(f"ok: {scope}, {counts}, every hash, chain link and anchor checks out")
        return code
    for problem in report.problems:
        say(problem.line())
    if report.problem_count > len(report.problems):
        say(f"  ... and {report.problem_count - len(report.problems):,} more")
    say(f"PROBLEMS: {count(report.problem_count, 'problem')} in {scope} ({counts} checked)")
    return code


def _anchor(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        anchor = store.anchor()
    if anchor is None:
        message = "the log is empty: nothing to anchor"
        if args.json:
            # Skipped by `verify --anchor FILE` (the cron job's file of lines).
            emit({"anchored": False, "events": 0, "message": message})
        else:
            say(message)
        return EXIT_OK
    if args.json:
        record: dict[str, Any] = {
            **msgspec.structs.asdict(anchor),
            "digest": anchor.digest.hex(),
        }
        emit(record)
        return EXIT_OK
    say(
        f"anchor #{anchor.anchor_id}: {count(anchor.events, 'event')} through checkpoint "
        f"{anchor.checkpoint}\n  sha256 {anchor.digest.hex()}\n"
        "  keep this digest outside the database (or save the --json line): "
        "`eventstore verify --anchor FILE` proves the log up to it unchanged"
    )
    return EXIT_OK


def add_parser(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="recompute every hash and check the chains (exit 1 on any problem, "
        "or --stream of a stream that does not exist)",
    )
    verify.add_argument("--stream", metavar="STREAM", help="only this stream")
    verify.add_argument(
        "--anchor",
        metavar="FILE",
        action="append",
        help="an anchor saved outside the database (the line `eventstore anchor --json` "
        "printed; a file of such lines): prove the log up to it unchanged (repeatable)",
    )
    verify.add_argument(
        "--from-anchor",
        metavar="FILE",
        help="trust this saved anchor (the last one in FILE) and check only what follows it",
    )
    verify.add_argument(
        "--chunk-size",
        metavar="N",
        type=positive_int,
        default=integrity.DEFAULT_CHUNK_SIZE,
        help=f"events read per statement (default {integrity.DEFAULT_CHUNK_SIZE})",
    )
    add_json(verify)
    add_dsn(verify)
    verify.set_defaults(handler=_verify)

    anchor = commands.add_parser(
        "anchor", help="record a digest of the log so far (run it from cron; publish the digest)"
    )
    add_json(anchor)
    add_dsn(anchor)
    anchor.set_defaults(handler=_anchor)
