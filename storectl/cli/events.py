"""``eventstore append | read | tail``: writing one event, reading a
stream, and the global log (once, or following it)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TextIO

import msgspec

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    Checkpoint,
    CheckpointNotInLog,
    EventStore,
    EventStoreError,
    NewEvent,
    StorageUnavailable,
    StoredEvent,
    ValidationError,
)
from eventstore.events import ExpectedVersion
from projections import sql as projection_sql

from .common import EXIT_OK, add_dsn, add_json, open_store, positive_float, positive_int
from .output import count, emit, event_json, event_line, say
from .signals import FollowStop, Stopped, handling_signals

__all__ = ["add_parser", "expected_version", "parse_json_object"]

PAGE_SIZE: Final = 1000
#: `tail --follow` in an outage: the longest pause between tries (seconds).
FOLLOW_MAX_WAIT: Final = 5.0

_EXPECTED_NAMES: Final[dict[str, ExpectedVersion]] = {
    "any": ANY,
    "no-stream": NO_STREAM,
    "stream-exists": STREAM_EXISTS,
}


# -- input --------------------------------------------------------------------


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    """The JSON object given to ``--data`` / ``--metadata``.

    msgspec 0.22 has no hook for JSON numbers, so they decode as int and
    float. A float is stored as its shortest round-trip form, which is exact
    for every decimal of up to 15 significant digits; a number that a float
    would round (``0.1000000000000000055``, ``1e400``) is refused instead of
    being recorded as something else: pass such a value as a string.
    """
    field = option.lstrip("-")
    try:
        # Bytes that are not UTF-8 reach argv as lone surrogates (PEP 383).
        encoded = text.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"{option} is not valid UTF-8", field=field) from None
    try:
        value = msgspec.json.decode(encoded)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationError(f"{option} is not valid JSON: {exc}", field=field) from exc
    except RecursionError:
        raise ValidationError(f"{option} is nested too deeply", field=field) from None
    if not isinstance(value, dict):
        raise ValidationError(
            f"{option} must be a JSON object, got {type(value).__name__}", field=field
        )
    inexact: list[str] = []

    def check(literal: str) -> float:
        number = float(literal)
        try:
            exact = math.isfinite(number) and Decimal(repr(number)) == Decimal(literal)
        except InvalidOperation:
            exact = False
        if not exact:
            inexact.append(literal)
        return number

    # msgspec accepted it, so the standard library parses it too: this pass
    # only looks at each number's literal text.
    try:
        json.loads(text, parse_float=check)
    except RecursionError:
        raise ValidationError(f"{option} is nested too deeply", field=field) from None
    if inexact:
        raise ValidationError(
            f"{option}: the number {inexact[0]} cannot be stored exactly as a JSON number "
            "(it would be rounded); pass it as a string",
            field=field,
        )
    return value


def expected_version(text: str) -> ExpectedVersion:
    """``--expected-version``: N, any, no-stream or stream-exists."""
    named = _EXPECTED_NAMES.get(text.lower())
    if named is not None:
        return named
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"invalid expected version {text!r}: an integer >= 0, any, no-stream or stream-exists"
    )


# -- output -------------------------------------------------------------------


def _print_events(events: Sequence[StoredEvent], as_json: bool, out: TextIO) -> None:
    render = event_json if as_json else event_line
    for event in events:
        out.write(render(event) + "\n")


def _print_resume(checkpoint: str | None, as_json: bool, where: TextIO) -> None:
    """The checkpoint to resume from: ``-- checkpoint X (continue with
    --after X)``, or with --json the line ``{"resume_after": X}`` (null:
    the start of the log)."""
    if as_json:
        emit({"resume_after": checkpoint}, where)
    elif checkpoint is None:
        say("-- no events yet (checkpoint: start of the log)", where)
    else:
        say(f"-- checkpoint {checkpoint} (continue with --after {checkpoint})", where)
    where.flush()


# -- commands -----------------------------------------------------------------


def _append(args: argparse.Namespace) -> int:
    data = parse_json_object(args.data, "--data")
    metadata = None if args.metadata is None else parse_json_object(args.metadata, "--metadata")
    with open_store(args) as store:
        result = store.append(
            args.stream,
            [NewEvent(args.type, data, metadata)],
            expected_version=args.expected_version,
            idempotency_key=args.idempotency_key,
        )
    if args.json:
        emit(result)
        return EXIT_OK
    where = f"{result.stream_id} v{result.last_version} at position {result.positions[-1]}"
    if result.duplicate:
        say(f"duplicate: key {args.idempotency_key!r} already recorded {where}; nothing written")
    else:
        say(f"appended {where}")
    return EXIT_OK


def _read(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        events = store.read_stream(args.stream, from_version=args.from_version, limit=args.limit)
        version = store.stream_version(args.stream) if not events else None
    _print_events(events, args.json, sys.stdout)
    if args.json:
        # The summary goes to stderr: stdout holds only events.
        emit(
            {
                "stream_id": args.stream,
                "events": len(events),
                "first_version": events[0].stream_version if events else None,
                "last_version": events[-1].stream_version if events else None,
            },
            sys.stderr,
        )
    elif events:
        say(
            f"-- {count(len(events), 'event')} of {args.stream}, "
            f"v{events[0].stream_version}..v{events[-1].stream_version}"
        )
    elif version == 0:
        say(f"-- no stream {args.stream}: nothing was ever appended to it")
    else:
        say(f"-- no events in {args.stream} from v{args.from_version} (it is at v{version})")
    return EXIT_OK


def _unseen_types(store: EventStore, types: Sequence[str] | None) -> list[str]:
    """The types among ``types`` of which the log holds no event."""
    return [t for t in dict.fromkeys(types or ()) if not store.find_events(type=t, limit=1).items]


def _beyond_head(store: EventStore, error: CheckpointNotInLog) -> EventStoreError:
    """What to say about ``--after`` naming no event: a checkpoint past the
    newest event is not this log's (another database's, or one restored to
    a point before it); one inside the log is the restore case."""
    rows = store.query("tail", projection_sql.HEAD, ())
    head = str(rows[0][0]) if rows else None
    if head is not None and Checkpoint.parse(error.checkpoint) <= Checkpoint.parse(head):
        return error
    newest = "no event is readable" if head is None else f"the newest readable event is at {head}"
    return CheckpointNotInLog(
        f"{error.message}. It is beyond the head of this log ({newest}): it may be another "
        "database's",
        checkpoint=error.checkpoint,
        operation="tail",
    )


def _tail(args: argparse.Namespace) -> int:
    checkpoint: str | None = args.after
    remaining: int | None = args.limit
    out = sys.stdout
    stop = FollowStop()
    outage = 0  # failed reads in a row while following
    try:
        with handling_signals(stop) if args.follow else nullcontext(), open_store(args) as store:
            for name in _unseen_types(store, args.types):
                # Not an error (it may be appended later), but worth saying.
                note = f"no event of type {name!r} is in the log (yet); type names match exactly"
                if args.json:
                    emit({"note": note, "type": name}, sys.stderr)
                else:
                    say(f"eventstore: note: {note}", sys.stderr)
            while not stop.requested and (remaining is None or remaining > 0):
                size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
                try:
                    page = store.read_all(after=checkpoint, limit=size, types=args.types)
                except CheckpointNotInLog as exc:
                    raise _beyond_head(store, exc) from exc
                except StorageUnavailable as exc:
                    if not args.follow:
                        raise
                    # An outage: wait (each read is bounded by retry_timeout,
                    # each pause by FOLLOW_MAX_WAIT) and resume where it was.
                    outage += 1
                    wait = min(FOLLOW_MAX_WAIT, args.poll_interval * 2**outage)
                    say(
                        f"eventstore: tail: {exc.message}; trying again in {wait:.1f} s "
                        f"(at {checkpoint or 'the start of the log'})",
                        sys.stderr,
                    )
                    sys.stderr.flush()
                    stop.sleep(wait)
                    continue
                if outage:
                    say("eventstore: tail: reading again", sys.stderr)
                    sys.stderr.flush()
                    outage = 0
                if page:
                    _print_events(page, args.json, out)
                    out.flush()
                    checkpoint = page[-1].checkpoint
                    if remaining is not None:
                        remaining -= len(page)
                if len(page) < size:
                    if not args.follow:
                        break
                    if not page:
                        stop.sleep(args.poll_interval)
    except Stopped:
        pass
    finally:
        # Following, the place to resume from goes to stderr whenever it
        # stops (a signal, --limit, an error): stdout is the live feed.
        if args.follow:
            _print_resume(checkpoint, args.json, sys.stderr)
    if not args.follow:
        # A one-off read: after its events (with --json on stderr, so that
        # stdout holds only events).
        _print_resume(checkpoint, args.json, sys.stderr if args.json else out)
    return EXIT_OK


def add_parser(commands: Any) -> None:
    append = commands.add_parser("append", help="append one event to a stream")
    append.add_argument("stream", metavar="STREAM", help="stream id, e.g. portfolio-42")
    append.add_argument("type", metavar="TYPE", help="event type, e.g. CashDeposited")
    append.add_argument("--data", required=True, metavar="JSON", help="the payload, a JSON object")
    append.add_argument("--metadata", metavar="JSON", help="metadata, a JSON object")
    append.add_argument(
        "--expected-version",
        type=expected_version,
        default=ANY,
        metavar="N|any|no-stream|stream-exists",
        help="refuse the append unless the stream is at this version (default: any)",
    )
    append.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="repeating the same request with this key writes nothing and reports a duplicate",
    )
    add_json(append)
    add_dsn(append)
    append.set_defaults(handler=_append)

    read = commands.add_parser("read", help="print a stream's events")
    read.add_argument("stream", metavar="STREAM")
    read.add_argument("--from-version", type=positive_int, default=1, metavar="N")
    read.add_argument("--limit", type=positive_int, default=None, metavar="N")
    add_json(read)
    add_dsn(read)
    read.set_defaults(handler=_read)

    tail = commands.add_parser("tail", help="print the global log (every stream, in commit order)")
    tail.add_argument(
        "--after", metavar="CHECKPOINT", help="start after this checkpoint (default: the start)"
    )
    tail.add_argument("--limit", type=positive_int, metavar="N", help="stop after N events")
    tail.add_argument(
        "--follow", action="store_true", help="keep printing new events as they commit"
    )
    tail.add_argument(
        "--poll-interval",
        type=positive_float,
        default=0.2,
        metavar="S",
        help="with --follow: seconds to wait when nothing new is there (default: 0.2)",
    )
    tail.add_argument(
        "--types", nargs="+", action="extend", metavar="TYPE", help="only these event types"
    )
    add_json(tail)
    add_dsn(tail)
    tail.set_defaults(handler=_tail)
