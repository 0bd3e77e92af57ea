"""The ``eventstore`` command line.

Every command takes ``--dsn`` and falls back to ``EVENTSTORE_DSN``. Output is
for people by default and JSON lines with ``--json``. Errors print one line
on stderr and exit 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any, TextIO

import msgspec

from .errors import EventStoreError, ValidationError
from .events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    StoredEvent,
)
from .settings import Settings
from .sqitch import Sqitch, build_target
from .store import EventStore

__all__ = ["main"]

DSN_ENV = "EVENTSTORE_DSN"
EXIT_ERROR = 1
EXIT_USAGE = 2
#: What a shell reports for a command killed by SIGPIPE (``… | head``).
EXIT_BROKEN_PIPE = 128 + 13
#: Human output: one line per event, cut to this width.
LINE_WIDTH = 160
#: An open transaction older than this holds back the global readers.
OLD_TRANSACTION_SECONDS = 60.0
PAGE_SIZE = 1000
#: Human output shows payloads compact, keys in alphabetical order.
_compact = msgspec.json.Encoder(order="sorted")

_EXPECTED_NAMES: dict[str, ExpectedVersion] = {
    "any": ANY,
    "no-stream": NO_STREAM,
    "stream-exists": STREAM_EXISTS,
}


class _Stopped(BaseException):
    """SIGTERM while following: leave the poll loop like Ctrl-C does."""


def _dsn(args: argparse.Namespace) -> str:
    dsn: str | None = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise ValidationError(f"no database given: pass --dsn or set {DSN_ENV}", field="dsn")
    return dsn


@contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[EventStore]:
    dsn = _dsn(args)
    with EventStore.open(dsn, Settings.from_env(pool_min_size=1, pool_max_size=2)) as store:
        yield store


# -- db -----------------------------------------------------------------------


def _db(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    sqitch = Sqitch()
    if args.db_command == "deploy":
        if sqitch.ensure_database(dsn):
            print(f"created database {sqitch_target_name(dsn)}", file=sys.stderr)
        sqitch.deploy(dsn)
    elif args.db_command == "verify":
        sqitch.verify(dsn)
    elif args.db_command == "revert":
        sqitch.revert(dsn, to=args.to)
    elif args.db_command == "status":
        sqitch.status(dsn)
    return 0


def sqitch_target_name(dsn: str) -> str:
    return build_target(dsn).dbname


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
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationError(f"{option} is not valid JSON: {exc}", field=field) from exc
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
    json.loads(text, parse_float=check)
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


# -- output -------------------------------------------------------------------


def _time(value: dt.datetime) -> str:
    utc = value.astimezone(dt.UTC)
    text = utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def event_line(event: StoredEvent) -> str:
    """``position  stream vN  Type  time  {data}``, at most LINE_WIDTH wide."""
    data = _compact.encode(event.data).decode()
    line = (
        f"{event.position:>6}  {event.stream_id} v{event.stream_version}  {event.type}  "
        f"{_time(event.occurred_at)}  {data}"
    )
    if len(line) > LINE_WIDTH:
        line = line[: LINE_WIDTH - 1] + "…"
    return line


def event_json(event: StoredEvent) -> str:
    """Every StoredEvent field, bytes as hex, as one JSON line."""
    record = {name: getattr(event, name) for name in event.__struct_fields__}
    for name, value in record.items():
        if isinstance(value, bytes):
            record[name] = value.hex()
    return msgspec.json.encode(record).decode()


def _print_events(events: Sequence[StoredEvent], as_json: bool, out: TextIO) -> None:
    render = event_json if as_json else event_line
    for event in events:
        out.write(render(event) + "\n")


# -- commands -----------------------------------------------------------------


def _append(args: argparse.Namespace) -> int:
    data = parse_json_object(args.data, "--data")
    metadata = None if args.metadata is None else parse_json_object(args.metadata, "--metadata")
    with _open_store(args) as store:
        result: AppendResult = store.append(
            args.stream,
            [NewEvent(args.type, data, metadata)],
            expected_version=args.expected_version,
            idempotency_key=args.idempotency_key,
        )
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    where = f"{result.stream_id} v{result.last_version} at position {result.positions[-1]}"
    if result.duplicate:
        print(f"duplicate: key {args.idempotency_key!r} already recorded {where}; nothing written")
    else:
        print(f"appended {where}")
    return 0


def _read(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        events: list[StoredEvent] = store.read_stream(
            args.stream, from_version=args.from_version, limit=args.limit
        )
    _print_events(events, args.json, sys.stdout)
    if not args.json:
        if events:
            print(
                f"-- {len(events)} event(s) of {args.stream}, "
                f"v{events[0].stream_version}..v{events[-1].stream_version}"
            )
        else:
            print(f"-- no events in {args.stream} from v{args.from_version}")
    return 0


class _StopRequest:
    """SIGTERM / SIGINT while following.

    A signal that arrives while a page is being read only asks to stop: the
    loop ends once that page is printed, and the connection goes back to the
    pool clean. While sleeping between polls, or on a second signal, it
    stops at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.sleeping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.sleeping or self.requested:
            raise _Stopped
        self.requested = True

    def sleep(self, seconds: float) -> None:
        self.sleeping = True
        try:
            if not self.requested:
                time.sleep(seconds)
        finally:
            self.sleeping = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self)}
        # SIGINT only where it is not ignored (a shell's background job).
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, self)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _tail(args: argparse.Namespace) -> int:
    checkpoint: str | None = args.after
    remaining: int | None = args.limit
    out = sys.stdout
    stop = _StopRequest()
    try:
        with stop.installed() if args.follow else nullcontext(), _open_store(args) as store:
            while not stop.requested and (remaining is None or remaining > 0):
                size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
                page: list[StoredEvent] = store.read_all(
                    after=checkpoint, limit=size, types=args.types
                )
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
    except _Stopped:
        pass
    if not args.json:
        # The place to resume from: on stdout after a one-off read, on
        # stderr when following (stdout is the live feed).
        where = sys.stderr if args.follow else out
        if checkpoint is None:
            print("-- no events yet (checkpoint: start of the log)", file=where)
        else:
            print(f"-- checkpoint {checkpoint} (continue with --after {checkpoint})", file=where)
    return 0


def _status(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        status = store.status()
    if args.json:
        print(msgspec.json.encode(status).decode())
        return EXIT_ERROR if status.xid_hazard else 0
    last_at = "-" if status.last_event_at is None else _time(status.last_event_at)
    print(f"events:                {status.events}")
    print(f"streams:               {status.streams}")
    print(f"last position:         {status.last_position or '-'} (at {last_at})")
    age = status.oldest_transaction_seconds
    if age is None:
        print("oldest transaction:    none running")
    else:
        # Clamped: a transaction that began after this statement's now() reads as < 0.
        age = max(age, 0.0)
        line = f"oldest transaction:    {age:.1f} s (pid {status.oldest_transaction_pid})"
        if age > OLD_TRANSACTION_SECONDS:
            line += (
                " -- HOLDING BACK global readers: new events stay invisible to read_all "
                "until it ends"
            )
        print(line)
    print(f"events behind horizon: {status.events_behind_horizon}")
    if status.xid_hazard:
        print(f"xid hazard:            {status.xid_hazard}")
        return EXIT_ERROR
    print("xid hazard:            none")
    return 0


def _verify(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        report = store.verify_chain(args.stream)
    if args.json:
        print(msgspec.json.encode({**msgspec.structs.asdict(report), "ok": report.ok}).decode())
        return 0 if report.ok else EXIT_ERROR
    scope = f"stream {args.stream}" if args.stream else "the whole log"
    counts = f"{report.events_checked} events in {report.streams_checked} streams"
    if not args.stream:
        counts += f", {report.anchors_checked} anchors"
    if report.ok:
        print(f"ok: {scope}, {counts}, every hash, chain link and anchor checks out")
        return 0
    for problem in report.problems:
        print(
            f"  {problem.position:>6}  {problem.stream_id} v{problem.stream_version}  "
            f"{problem.problem}"
        )
    for bad in report.anchor_problems:
        print(f"  anchor #{bad.anchor_id} (through {bad.checkpoint})  {bad.problem}")
    found = len(report.problems) + len(report.anchor_problems)
    print(f"PROBLEMS: {found} in {scope} ({counts} checked)")
    return EXIT_ERROR


def _anchor(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        anchor = store.anchor()
    if anchor is None:
        print("the log is empty: nothing to anchor")
        return 0
    if args.json:
        record = {**msgspec.structs.asdict(anchor), "digest": anchor.digest.hex()}
        print(msgspec.json.encode(record).decode())
        return 0
    print(
        f"anchor #{anchor.anchor_id}: {anchor.events} events through checkpoint "
        f"{anchor.checkpoint}\n  sha256 {anchor.digest.hex()}\n"
        "  keep this digest outside the database; `eventstore verify` checks every anchor"
    )
    return 0


# -- parser -------------------------------------------------------------------


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn", help=f"PostgreSQL connection string (default: ${DSN_ENV})", default=None
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventstore", description="The trading assistant's audit store."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="deploy, verify, revert the schema (Sqitch)")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (
        ("deploy", "create the database if needed and deploy every change, verified"),
        ("verify", "run every deployed change's verify script"),
        ("revert", "revert changes (all, or back to --to CHANGE)"),
        ("status", "show what is deployed"),
    ):
        sub = db_commands.add_parser(name, help=text)
        _add_dsn(sub)
        if name == "revert":
            sub.add_argument("--to", help="revert down to this change (kept)")
        sub.set_defaults(handler=_db)

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
    _add_json(append)
    _add_dsn(append)
    append.set_defaults(handler=_append)

    read = commands.add_parser("read", help="print a stream's events")
    read.add_argument("stream", metavar="STREAM")
    read.add_argument("--from-version", type=positive_int, default=1, metavar="N")
    read.add_argument("--limit", type=positive_int, default=None, metavar="N")
    _add_json(read)
    _add_dsn(read)
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
    _add_json(tail)
    _add_dsn(tail)
    tail.set_defaults(handler=_tail)

    status = commands.add_parser(
        "status", help="counts, the oldest transaction, the restore hazard (exit 1 if set)"
    )
    _add_json(status)
    _add_dsn(status)
    status.set_defaults(handler=_status)

    verify = commands.add_parser(
        "verify", help="recompute every hash and check the chains (exit 1 on any problem)"
    )
    verify.add_argument("--stream", metavar="STREAM", help="only this stream")
    _add_json(verify)
    _add_dsn(verify)
    verify.set_defaults(handler=_verify)

    anchor = commands.add_parser(
        "anchor", help="record a digest of the log so far (run it from cron; publish the digest)"
    )
    _add_json(anchor)
    _add_dsn(anchor)
    anchor.set_defaults(handler=_anchor)
    return parser


def _silence_stdout() -> None:
    """After a broken pipe: send what is left to /dev/null, so the flush at
    exit does not complain a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except EventStoreError as exc:
        print(f"eventstore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
