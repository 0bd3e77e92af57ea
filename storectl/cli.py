"""The ``eventstore`` command line.

Every command takes ``--dsn`` and falls back to ``EVENTSTORE_DSN``. Output is
for people by default and JSON lines with ``--json``. Errors print one line
on stderr and exit 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any, ClassVar, Final, TextIO

import msgspec
import psycopg

from eventstore import integrity
from eventstore import sql as store_sql
from eventstore.connection import map_error
from eventstore.errors import EventStoreError, StorageUnavailable, ValidationError, first_line
from eventstore.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RawStoredEvent,
    StoredEvent,
)
from eventstore.settings import Settings, redact
from eventstore.sqitch import Sqitch, build_target
from eventstore.store import EventStore
from projections import CheckpointMoved, ProjectionRunner
from projections import sql as projection_sql
from projections.rebuild import PROJECTIONS, rebuild
from projections.runner import skip_stream
from projections.status import lease_sessions, projection_status
from trading import trading_registry
from trading.events import ProjectionEventSkipped

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
#: `tail --follow` in an outage: the longest pause between tries (seconds).
FOLLOW_MAX_WAIT = 5.0
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
    settings = Settings.from_env(pool_min_size=1, pool_max_size=2)
    with EventStore.open(dsn, settings, registry=trading_registry()) as store:
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
        events = _logged_events(dsn)
        if events and not args.yes:
            raise EventStoreError(
                f"the log holds {events:,} event{'' if events == 1 else 's'}: a revert can "
                "drop them and their "
                "idempotency keys for good. Back up first (docs/runbook.md), then run it again "
                "with --yes",
                operation="db revert",
            )
        sqitch.revert(dsn, to=args.to)
    elif args.db_command == "status":
        sqitch.status(dsn)
    return 0


def _logged_events(dsn: str) -> int:
    """How many events the log at ``dsn`` holds (0 when there is no log)."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT CASE WHEN to_regclass('utcp.stored_events') IS NULL THEN 0 "
                "ELSE (SELECT count(*) FROM utcp.stored_events) END"
            ).fetchone()
    except psycopg.Error as exc:
        failure = StorageUnavailable(
            f"cannot read the log before reverting: {redact(first_line(exc), dsn)}",
            operation="db revert",
            sqlstate=exc.sqlstate,
        )
        failure.__cause__ = type(exc)(redact(str(exc), dsn))
    else:
        return int(row[0]) if row else 0
    raise failure


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


#: Characters a terminal acts on rather than shows (C1 controls such as NEL
#: and CSI, bidirectional overrides and isolates, line and paragraph
#: separators): what the log holds is shown, never obeyed. JSON output
#: escapes them as \uXXXX too, which is still the same JSON string.
_TERMINAL_CONTROLS: Final = {
    code: f"\\u{code:04x}"
    for code in (
        *range(0x80, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0x2028,
        0x2029,
    )
}


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (C0 and C1
    controls, bidirectional controls, separators) written as an escape."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else f"\\u{ord(ch):04x}" for ch in text
    ).translate(_TERMINAL_CONTROLS)


def event_line(event: StoredEvent) -> str:
    """``position  stream vN  Type  time  {data}``, at most LINE_WIDTH wide."""
    data = _compact.encode(event.data).decode()
    line = printable(
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
    return msgspec.json.encode(record).decode().translate(_TERMINAL_CONTROLS)


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
    outage = 0  # failed reads in a row while following
    try:
        with stop.installed() if args.follow else nullcontext(), _open_store(args) as store:
            while not stop.requested and (remaining is None or remaining > 0):
                size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
                try:
                    page: list[StoredEvent] = store.read_all(
                        after=checkpoint, limit=size, types=args.types
                    )
                except StorageUnavailable as exc:
                    if not args.follow:
                        raise
                    # An outage: wait (each read is bounded by retry_timeout,
                    # each pause by FOLLOW_MAX_WAIT) and resume where it was.
                    outage += 1
                    wait = min(FOLLOW_MAX_WAIT, args.poll_interval * 2**outage)
                    print(
                        f"eventstore: tail: {exc.message}; trying again in {wait:.1f} s "
                        f"(at {checkpoint or 'the start of the log'})",
                        file=sys.stderr,
                        flush=True,
                    )
                    stop.sleep(wait)
                    continue
                if outage:
                    print("eventstore: tail: reading again", file=sys.stderr, flush=True)
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
    except _Stopped:
        pass
    finally:
        # Following, the place to resume from goes to stderr whenever it
        # stops (a signal, --limit, an error): stdout is the live feed.
        if args.follow:
            _print_resume(checkpoint, args.json, sys.stderr)
    if not args.follow and not args.json:
        _print_resume(checkpoint, False, out)  # a one-off read: after its events
    return 0


def _print_resume(checkpoint: str | None, as_json: bool, where: TextIO) -> None:
    """The checkpoint to resume from: ``-- checkpoint X (continue with
    --after X)``, or with --json the line ``{"resume_after": X}`` (null: the
    start of the log)."""
    if as_json:
        print(json.dumps({"resume_after": checkpoint}), file=where, flush=True)
    elif checkpoint is None:
        print("-- no events yet (checkpoint: start of the log)", file=where, flush=True)
    else:
        print(f"-- checkpoint {checkpoint} (continue with --after {checkpoint})", file=where)
        where.flush()


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
    who = ", ".join(
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
    )
    if status.oldest_transaction_state:
        who += f", {status.oldest_transaction_state}"
    if age is None and not who:
        print("oldest transaction:    none running")
    elif age is None:
        print(
            f"oldest transaction:    age unknown ({who}): the schema's owner cannot see other "
            "roles' sessions (docs/runbook.md, 'Stalls')"
        )
    else:
        # Clamped: a transaction that began after this statement's now() reads as < 0.
        age = max(age, 0.0)
        line = f"oldest transaction:    {age:.1f} s ({who})"
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
    if args.stream is None:
        return _verify_log(args)
    if args.anchor or args.from_anchor:
        raise ValidationError(
            "--anchor and --from-anchor check the whole log: leave out --stream", field="stream"
        )
    with _open_store(args) as store:
        report = store.verify_chain(args.stream)
    if args.json:
        print(msgspec.json.encode({**msgspec.structs.asdict(report), "ok": report.ok}).decode())
        return 0 if report.ok else EXIT_ERROR
    scope = f"stream {args.stream}"
    counts = f"{report.events_checked} events in {report.streams_checked} streams"
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


def _verify_log(args: argparse.Namespace) -> int:
    """The whole log, recomputed here (eventstore/integrity.py): no function
    of the database is trusted; saved anchors prove the past unchanged."""
    saved = integrity.load_saved_anchors(args.anchor or ())
    start: integrity.SavedAnchor | None = None
    if args.from_anchor:
        start = integrity.load_saved_anchors([args.from_anchor])[-1]
    dsn = _dsn(args)
    display = ProgressDisplay("verify") if sys.stderr.isatty() else None
    with integrity.connect(dsn, Settings.from_env()) as conn:
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
        print(
            "note: idempotency keys not checked: this role may not read utcp.idempotency_keys "
            "(connect as a member of utcp_operator)",
            file=sys.stderr,
        )
    if args.json:
        for problem in report.problems:
            print(json.dumps(problem.record()))
        print(json.dumps(report.summary()))
        return 0 if report.ok else EXIT_ERROR
    scope = "the whole log"
    if start is not None:
        scope = f"the log after saved anchor #{start.anchor_id} (through {start.checkpoint})"
    counts = (
        f"{report.events_checked} events in {report.streams_checked} streams, "
        f"{report.anchors_checked} anchors"
    )
    if saved:
        counts += f", {report.saved_anchors_checked} saved anchors"
    if report.keys_checked is not None:
        counts += f", {report.keys_checked} idempotency keys"
    if report.ok:
        print(f"ok: {scope}, {counts}, every hash, chain link and anchor checks out")
        return 0
    for problem in report.problems:
        print(problem.line())
    if report.problem_count > len(report.problems):
        print(f"  ... and {report.problem_count - len(report.problems)} more")
    print(f"PROBLEMS: {report.problem_count} in {scope} ({counts} checked)")
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
        "  keep this digest outside the database (or save the --json line): "
        "`eventstore verify --anchor FILE` proves the log up to it unchanged"
    )
    return 0


# -- project ------------------------------------------------------------------

#: ``project rebuild`` found rows that differ (reported; swapped unless --dry-run).
EXIT_DIFFERENCES = 3
DEFAULT_LOCK_TIMEOUT = 60.0
#: ``project run``: after a lost connection, standby again after this delay.
RECONNECT_DELAY = 1.0
PROGRESS_WIDTH = 10
#: Progress on a terminal is redrawn this often; elsewhere, one line per period.
TTY_REDRAW_SECONDS = 0.1
LOG_LINE_SECONDS = 2.0


def progress_line(done: int, total: int, rate: float, width: int = PROGRESS_WIDTH) -> str:
    """``[#####     ] 52% 12,345/23,456 events  4,321 ev/s``"""
    fraction = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(fraction * width)
    return (
        f"[{'#' * filled}{' ' * (width - filled)}] {int(fraction * 100)}% "
        f"{done:,}/{total:,} events  {rate:,.0f} ev/s"
    )


class ProgressDisplay:
    """Events applied so far, on stderr: a bar redrawn in place on a
    terminal, a plain line every few seconds otherwise (logs, pipes)."""

    #: A bar drawn on a terminal and not finished: an error ends its line first.
    unfinished: ClassVar[ProgressDisplay | None] = None

    @classmethod
    def end_line(cls) -> None:
        """End an unfinished bar's line (before an error message)."""
        if cls.unfinished is not None:
            cls.unfinished.stream.write("\n")
            cls.unfinished.stream.flush()
            cls.unfinished = None

    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = TTY_REDRAW_SECONDS if self.tty else LOG_LINE_SECONDS
        self.started = time.monotonic()
        self.done = 0
        self.total = 0
        self.shown_at: float | None = None
        self.shown: tuple[int, int] | None = None
        self.width = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if self.shown_at is None or now - self.shown_at >= self.interval:
            self._show(now)

    def finish(self) -> None:
        """Show the final count and end the line."""
        if self.shown != (self.done, self.total) and (self.done or self.tty):
            self._show(time.monotonic())
        if self.tty and self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.shown = None
        self.shown_at = None
        self.width = 0
        if ProgressDisplay.unfinished is self:
            ProgressDisplay.unfinished = None

    def _show(self, now: float) -> None:
        self.shown_at = now
        if self.shown == (self.done, self.total):
            return
        self.shown = (self.done, self.total)
        elapsed = now - self.started
        line = progress_line(self.done, self.total, self.done / elapsed if elapsed > 0 else 0.0)
        if self.tty:
            padding = " " * max(0, self.width - len(line))
            self.width = len(line)
            self.stream.write(f"\r{line}{padding}")
            ProgressDisplay.unfinished = self
        else:
            self.stream.write(f"{self.label}: {line}\n")
        self.stream.flush()


class _GracefulStop:
    """SIGTERM / SIGINT for the projection workers: the first asks to stop
    after the current batch; a second stops at once (KeyboardInterrupt; the
    batch's transaction rolls back, the checkpoint stays consistent).

    The event is set from a helper thread: a handler runs between two
    bytecodes of the main thread, which may hold the event's own lock."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt
        threading.Thread(target=self.event.set, daemon=True).start()

    @contextmanager
    def installed(self) -> Iterator[None]:
        with _handling_signals(self):
            yield


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _handling_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    # SIGINT only where it is not ignored (a shell's background job).
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class _NoErrors(logging.Filter):
    """The command reports errors itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _projection_logging(level: int) -> None:
    logger = logging.getLogger("projections")
    for old in [h for h in logger.handlers if getattr(h, "_eventstore_cli", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("eventstore: %(message)s"))
    handler.addFilter(_NoErrors())
    handler._eventstore_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def _already_stopped() -> threading.Event:
    """A stop flag already set: ``acquire`` then tries the lock once."""
    stop = threading.Event()
    stop.set()
    return stop


def _lease_holder(store: EventStore, name: str) -> str:
    """Who holds projection ``name``'s lease: "pid 123, role …, application …"."""
    holder = lease_sessions(store, name).get("holder")
    if holder is None:
        return "pid unknown: it has just let go; try again"
    return holder.describe()


def _project_catch_up(args: argparse.Namespace) -> int:
    _projection_logging(logging.WARNING)
    dsn = _dsn(args)
    stop = _GracefulStop()
    with stop.installed(), _open_store(args) as store:
        runner = ProjectionRunner(store, dsn, batch_size=args.batch_size)
        name = runner.name
        if args.wait:
            if not runner.take_over(args.lock_timeout):
                raise EventStoreError(
                    f"projection {name!r}: a worker is active ({_lease_holder(store, name)}) "
                    f"and did not step back within {args.lock_timeout:g} s",
                    operation="catch-up",
                )
        elif not runner.acquire(_already_stopped()):
            raise EventStoreError(
                f"projection {name!r}: a worker is active ({_lease_holder(store, name)}); it "
                "keeps the tables up to date (pass --wait to pause it and catch up here)",
                operation="catch-up",
            )
        try:
            total = projection_status(store, name).lag_events
            display = ProgressDisplay("catch-up")
            done = 0

            def advance(count: int, _: RawStoredEvent) -> None:
                nonlocal done
                done += count
                display.update(done, max(total, done))

            # Up to the head as it is now: writers that keep appending cannot
            # keep a catch-up from ending (a `project run` worker follows them).
            runner.catch_up(stop.event, until=runner.head(), progress=advance)
            display.done, display.total = done, max(total, done) if stop.event.is_set() else done
            display.finish()
            checkpoint = runner.checkpoint()
        finally:
            runner.release()
    if stop.event.is_set():
        print(f"stopped: {done:,} events applied; checkpoint {checkpoint}")
    else:
        print(f"caught up: {done:,} events applied; checkpoint {checkpoint}")
    return 0


def _project_run(args: argparse.Namespace) -> int:
    _projection_logging(logging.INFO)
    dsn = _dsn(args)
    stop = _GracefulStop()
    err = sys.stderr
    with stop.installed(), _open_store(args) as store:
        runner = ProjectionRunner(
            store, dsn, batch_size=args.batch_size, poll_interval=args.poll_interval
        )
        active = lease_sessions(store, runner.name).get("holder")
        if active is not None:
            print(
                f"eventstore: projection {runner.name}: standby, a worker is active "
                f"({active.describe()}); taking over when it stops",
                file=err,
                flush=True,
            )

        def applied(count: int, last: RawStoredEvent) -> None:
            print(
                f"eventstore: projection {runner.name}: +{count} events, "
                f"checkpoint {last.checkpoint}",
                file=err,
                flush=True,
            )

        while not stop.event.is_set():
            try:
                runner.run(stop.event, progress=applied if args.verbose else None)
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                StorageUnavailable,
                CheckpointMoved,
            ) as exc:
                runner.release()
                print(
                    f"eventstore: projection {runner.name}: {first_line(exc)}; "
                    f"standby again in {RECONNECT_DELAY:g} s",
                    file=err,
                    flush=True,
                )
                stop.event.wait(RECONNECT_DELAY)
                continue
            break
    print(f"eventstore: projection {runner.name}: stopped", file=err, flush=True)
    return 0


def _project_skip(args: argparse.Namespace) -> int:
    """Record an operator's decision that projection NAME passes over one
    event its rules refuse (ProjectionEventSkipped, in the log)."""
    try:
        event_id = uuid.UUID(args.event_id)
    except ValueError:
        raise ValidationError(
            f"not an event id: {args.event_id!r}", field="event_id", operation="skip"
        ) from None
    name = args.name
    with _open_store(args) as store:
        found = store.query("skip", store_sql.EVENTS_BY_ID, ([event_id],))
        if not found:
            raise ValidationError(
                f"no event {event_id} in the log", field="event_id", operation="skip"
            )
        stream_id, version, position, _, event_type = found[0][:5]
        what = f"{event_type}, {stream_id} v{version}, position {position}"
        earlier = store.query(
            "skip",
            projection_sql.SKIP_DECISION,
            (skip_stream(name), ProjectionEventSkipped.EVENT_TYPE, str(event_id)),
        )
        if earlier:
            print(f"already decided by {earlier[0][1]}: {earlier[0][0]}")
            return 0
        decision = ProjectionEventSkipped(
            projection=name,
            event_id=event_id,
            reason=args.reason,
            actor=args.actor,
            occurred_at=dt.datetime.now(dt.UTC),
        )
        # The key names the recording role: a decision only counts when an
        # operator records it, so another role's earlier (ignored) decision
        # for this event must not stand in for it as a "duplicate".
        (role,) = store.query("skip", "SELECT session_user::text", ())[0]
        store.append(
            skip_stream(name),
            [NewEvent(ProjectionEventSkipped.EVENT_TYPE, decision)],
            idempotency_key=f"skip:{name}:{event_id}:{role}",
        )
        stopped_at = projection_status(store, name).last_error_event
    print(f"recorded: projection {name!r} passes over event {event_id} ({what})")
    print("          if its rules refuse it; it never drops an event they accept.")
    if stopped_at != event_id:
        print("          (the projection is not stopped at this event now)")
    print("next:     eventstore project catch-up, or restart `eventstore project run`")
    return 0


def _project_status(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        status = projection_status(store, args.name)
    code = EXIT_ERROR if status.last_error or not status.checkpoint_in_log else 0
    if args.json:
        print(msgspec.json.encode(status).decode())
        return code
    lag = (
        "caught up"
        if status.lag_events == 0
        else f"{status.lag_events:,} events, {status.lag_seconds:.1f} s behind"
    )
    print(f"projection:        {status.name}")
    print(f"checkpoint:        {status.checkpoint}")
    if not status.checkpoint_in_log:
        print(
            "                   names no event in this log (restored to a point before it?): "
            "the projection cannot go on from there; rebuild it: eventstore project rebuild"
        )
    print(f"events processed:  {status.events_processed:,}")
    print(f"lag:               {lag}")
    if status.waiting_events:
        print(
            f"waiting:           {status.waiting_events:,} committed events behind an open "
            "transaction (see `eventstore status`)"
        )
    if status.active_worker_pid is None:
        print("worker:            none active (start one: eventstore project run)")
    else:
        print(f"worker:            active (pid {status.active_worker_pid}, its PostgreSQL backend)")
    if status.rebuild_pid is not None:
        print(f"rebuild:           in progress (pid {status.rebuild_pid})")
    last = "-" if status.last_event_at is None else _time(status.last_event_at)
    print(f"last event at:     {last}")
    if status.last_error is None:
        print("last error:        none")
    else:
        at = "-" if status.last_error_at is None else _time(status.last_error_at)
        print(f"last error:        {status.last_error}")
        print(f"                   at {at}, event {status.last_error_event}")
        print("                   the projection is stopped before that event")
        print(
            "                   fix the rules, or pass over it: eventstore project skip "
            f"{status.last_error_event} --reason '...'"
        )
    return code


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dt.datetime):
        return _time(value)
    return str(value)


def _row_text(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={_cell(v)}" for k, v in row.items())


_PHASES = {
    "pause": "waiting for the live worker to pause",
    "sync": "live worker paused; bringing the live and rebuilt tables to one checkpoint",
    "compare": "comparing the live and the rebuilt tables",
    "swap": "swapping the rebuilt tables in (one transaction)",
}


def _project_rebuild(args: argparse.Namespace) -> int:
    _projection_logging(logging.WARNING)
    dsn = _dsn(args)
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
            print(f"rebuild: {_PHASES[now]}", file=err, flush=True)

    with _handling_signals(_interrupt), _open_store(args) as store:
        report = rebuild(
            store,
            dsn,
            args.name,
            progress=progress,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            lock_timeout=args.lock_timeout,
        )
    code = 0 if report.ok else EXIT_DIFFERENCES
    if args.json:
        record = {**msgspec.structs.asdict(report), "ok": report.ok}
        print(msgspec.json.encode(record).decode())
        return code
    rows = ", ".join(f"{table} {count:,}" for table, count in report.rows.items())
    print(
        f"rebuilt projection {report.name!r} from {report.events:,} events, at checkpoint "
        f"{report.checkpoint}: {rows} rows ({report.seconds:.1f} s; "
        f"live worker paused {report.paused_seconds:.1f} s)"
    )
    if report.live_error is not None:
        print(f"NOT COMPARED: the live projection cannot reach the checkpoint: {report.live_error}")
    elif not report.differences:
        print("no differences: the live tables match the rebuild row for row")
    else:
        print(
            f"DIFFERENCES: {len(report.differences)} row(s) differ between the live and the "
            f"rebuilt tables at checkpoint {report.checkpoint}:"
        )
        for diff in report.differences:
            key = ", ".join(f"{k}={v!r}" for k, v in diff.key.items())
            print(f"  {diff.table} ({key}):")
            if diff.live is None:
                print("      missing from live; rebuilt: " + _row_text(diff.rebuilt or {}))
            elif diff.rebuilt is None:
                print("      only in live (not in the rebuild): " + _row_text(diff.live))
            else:
                for column in diff.columns():
                    print(
                        f"      {column}: live {_cell(diff.live[column])}  "
                        f"rebuilt {_cell(diff.rebuilt[column])}"
                    )
    if report.swapped:
        if report.ok:
            print("swapped: the rebuilt tables are live")
        elif report.live_error is not None:
            print(
                "swapped anyway: the rebuilt tables (the whole log under the current rules) "
                "are live now, in place of a live projection that was stopped"
            )
        else:
            print(
                "swapped anyway: the rebuilt tables (the whole log under the current rules) "
                "are live now; the rows above were replaced"
            )
    else:
        print("dry run: nothing swapped, the live tables are unchanged")
    return code


_REBUILD_HELP = f"""\
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


def _add_project_parser(commands: Any) -> None:
    names = sorted(PROJECTIONS)
    project = commands.add_parser(
        "project", help="projections (trades, positions, portfolios): workers, rebuild, status"
    )
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")

    catch_up = actions.add_parser(
        "catch-up",
        help="apply every event committed when it starts, then exit",
        description="Apply every event committed when it starts to the projection, then exit 0 "
        "(events appended meanwhile are left for the next catch-up or a `project run` worker). "
        "Fails at once if a worker is active, unless --wait (which pauses it while this runs).",
    )
    catch_up.add_argument("--batch-size", type=positive_int, default=500, metavar="N")
    catch_up.add_argument(
        "--wait",
        action="store_true",
        help="if a worker is active, ask it to step back (up to --lock-timeout) and catch up here",
    )
    catch_up.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="S",
        help=f"with --wait: seconds to wait for the lock (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    _add_dsn(catch_up)
    catch_up.set_defaults(handler=_project_catch_up)

    run = actions.add_parser(
        "run",
        help="the long-running worker (standby while another is active)",
        description="Keep the projection up to date: wakes on new events (LISTEN/NOTIFY) and "
        "polls anyway. With another worker active it waits as a standby and takes over when "
        "that one stops. SIGTERM or SIGINT stops it after the current batch (exit 0); an event "
        "it cannot apply stops it with exit 1.",
    )
    run.add_argument("--batch-size", type=positive_int, default=500, metavar="N")
    run.add_argument(
        "--poll-interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds between polls when no notification comes (default: 1)",
    )
    run.add_argument("--verbose", action="store_true", help="print a line per batch applied")
    _add_dsn(run)
    run.set_defaults(handler=_project_run)

    rebuild = actions.add_parser(
        "rebuild",
        help="rebuild from the start of the log, compare, swap in (no downtime)",
        description=_REBUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rebuild.add_argument(
        "name",
        nargs="?",
        default="trading",
        choices=names,
        metavar="NAME",
        help="the projection (default: trading)",
    )
    rebuild.add_argument(
        "--dry-run", action="store_true", help="rebuild and compare, but do not swap"
    )
    rebuild.add_argument("--batch-size", type=positive_int, default=1000, metavar="N")
    rebuild.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the live worker to pause (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    _add_json(rebuild)
    _add_dsn(rebuild)
    rebuild.set_defaults(handler=_project_rebuild)

    skip = actions.add_parser(
        "skip",
        help="pass over one event the projection refuses (recorded in the log)",
        description="Record, in the log (a ProjectionEventSkipped event in "
        "projection-NAME), that projection NAME passes over event EVENT_ID when its rules "
        "refuse it. Live workers and every rebuild make the same decision; an event the rules "
        "accept is never dropped. Then run `eventstore project catch-up` or restart the worker.",
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
    _add_dsn(skip)
    skip.set_defaults(handler=_project_skip)

    status = actions.add_parser(
        "status",
        help="checkpoint, lag, active worker, last error (exit 1 if an error stopped it)",
    )
    status.add_argument(
        "name",
        nargs="?",
        default="trading",
        choices=names,
        metavar="NAME",
        help="the projection (default: trading)",
    )
    _add_json(status)
    _add_dsn(status)
    status.set_defaults(handler=_project_status)


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
            sub.add_argument(
                "--yes",
                action="store_true",
                help="revert even though the log holds events (they can be dropped for good)",
            )
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
    _add_json(verify)
    _add_dsn(verify)
    verify.set_defaults(handler=_verify)

    anchor = commands.add_parser(
        "anchor", help="record a digest of the log so far (run it from cron; publish the digest)"
    )
    _add_json(anchor)
    _add_dsn(anchor)
    anchor.set_defaults(handler=_anchor)

    _add_project_parser(commands)
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
        ProgressDisplay.end_line()
        print(f"eventstore: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
