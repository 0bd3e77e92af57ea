"""What every command shares: the exit codes, the database and settings a
command uses, the shared options, an error as one line, and the library's
log records as the command's own lines."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, TextIO

from eventstore import EventStore, EventStoreError, Settings, ValidationError
from eventstore.settings import ENV_PREFIX
from trading import trading_registry

from .output import json_line, printable

__all__ = [
    "DSN_ENV",
    "EXIT_BROKEN_PIPE",
    "EXIT_DIFFERENCES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_dsn",
    "add_json",
    "cli_settings",
    "configure_logging",
    "dsn",
    "error_line",
    "open_store",
    "positive_float",
    "positive_int",
]

DSN_ENV: Final = "EVENTSTORE_DSN"

# The exit codes (docs/runbook.md, "Exit codes"; `eventstore --help`).
#: Done; for a check (status, verify), nothing needs an operator.
EXIT_OK: Final = 0
#: An error (one line on stderr), or a check found what needs an operator.
EXIT_ERROR: Final = 1
#: A usage error (argparse).
EXIT_USAGE: Final = 2
#: ``project rebuild`` found rows that differ (reported; swapped unless --dry-run).
EXIT_DIFFERENCES: Final = 3
#: Interrupted (a second SIGINT/SIGTERM, or Ctrl-C where it stops at once).
EXIT_INTERRUPTED: Final = 130
#: What a shell reports for a command killed by SIGPIPE (``… | head``).
EXIT_BROKEN_PIPE: Final = 128 + 13

EXIT_CODES_HELP: Final = f"""\
exit status:
  {EXIT_OK}    done; for status, project status and verify: nothing needs an operator
  {EXIT_ERROR}    an error (one line on stderr, starting "eventstore: error:"), or a
       check found something that needs an operator (status: the restore hazard,
       readers held back longer than EVENTSTORE_STALL_THRESHOLD; project status:
       stopped by an error, checkpoint not in the log, events waiting with no
       worker active; verify: a problem; verify --stream: no such stream;
       tail --after: a checkpoint beyond the log's head)
  {EXIT_USAGE}    usage error
  {EXIT_DIFFERENCES}    project rebuild: rows differed between the live and the rebuilt tables
  {EXIT_INTERRUPTED}  interrupted
  {EXIT_BROKEN_PIPE}  the output's reader went away (… | head)
"""

#: A command's pool: small, unless EVENTSTORE_POOL_MIN_SIZE/MAX_SIZE say otherwise.
CLI_POOL_MIN: Final = 1
CLI_POOL_MAX: Final = 2


def dsn(args: argparse.Namespace) -> str:
    """``--dsn`` (before or after the command), else ``$EVENTSTORE_DSN``."""
    value: str | None = getattr(args, "dsn", None) or os.environ.get(DSN_ENV)
    if not value:
        raise ValidationError(f"no database given: pass --dsn or set {DSN_ENV}", field="dsn")
    return value


def cli_settings(**overrides: Any) -> Settings:
    """``Settings.from_env()``: every ``EVENTSTORE_*`` variable counts. A
    command needs few connections, so the pool sizes default to 1 and 2
    where their variables are not set."""
    pool: dict[str, Any] = {}
    env_min = os.environ.get(f"{ENV_PREFIX}POOL_MIN_SIZE")
    env_max = os.environ.get(f"{ENV_PREFIX}POOL_MAX_SIZE")
    if not env_min:
        pool["pool_min_size"] = CLI_POOL_MIN
    if not env_max:
        try:
            floor = int(env_min) if env_min else CLI_POOL_MIN
        except ValueError:
            floor = CLI_POOL_MIN  # from_env names the bad variable
        pool["pool_max_size"] = max(CLI_POOL_MAX, floor)
    return Settings.from_env(**{**pool, **overrides})


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[EventStore]:
    """The store at the command's database, with the trading types registered."""
    with EventStore.open(dsn(args), cli_settings(), registry=trading_registry()) as store:
        yield store


# -- options ------------------------------------------------------------------


def add_dsn(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--dsn``; a command's own (``top=False``) only sets it when given,
    so one given before the command counts too."""
    parser.add_argument(
        "--dsn",
        metavar="DSN",
        default=None if top else argparse.SUPPRESS,
        help=f"PostgreSQL connection string (default: ${DSN_ENV})",
    )


def add_json(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON lines",
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


# -- errors -------------------------------------------------------------------


def error_line(exc: EventStoreError) -> str:
    """``eventstore: error: MESSAGE (context)``: one line, each piece of
    context once (what the message already says is not repeated)."""
    message = exc.message
    extra = [
        f"{key}={value!r}"
        for key, value in exc.context().items()
        if str(value) not in message and key != "operation"
    ]
    text = f"{message} ({', '.join(extra)})" if extra else message
    return "eventstore: error: " + printable(" ".join(text.split("\n")))


# -- logging ------------------------------------------------------------------

#: The libraries whose records a command shows (the driver's and the pool's
#: are not: the store retries what they report, and the command reports
#: what outlasts the retries, once).
_LOGGERS: Final = ("eventstore", "projections", "trading")


class _Formatter(logging.Formatter):
    """``eventstore: MESSAGE`` (``warning:`` before a warning), after a UTC
    timestamp when the command runs for long (``project run``); with
    ``as_json``, one JSON line: ``{"time", "level", "message"}``."""

    def __init__(self, timestamps: bool, as_json: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self.as_json:
            line = {"time": stamp, "level": record.levelname.lower()}
            return json_line({**line, "message": record.getMessage()})
        level = "warning: " if record.levelno >= logging.WARNING else ""
        text = f"eventstore: {level}{printable(record.getMessage())}"
        return f"{stamp} {text}" if self.timestamps else text


class _Handler(logging.Handler):
    """Writes to ``stream``, or to whatever ``sys.stderr`` is when a record
    comes (not the one it was when the command started)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.target = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self.target if self.target is not None else sys.stderr
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:
            self.handleError(record)


class _BelowErrors(logging.Filter):
    """The command reports errors itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def configure_logging(
    level: int = logging.WARNING,
    *,
    timestamps: bool = False,
    as_json: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Show the libraries' records at ``level`` and above (errors excepted)
    as the command's own lines on stderr (JSON lines with ``as_json``);
    quiet psycopg's."""
    handler = _Handler(stream)
    handler.setFormatter(_Formatter(timestamps, as_json))
    handler.addFilter(_BelowErrors())
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_eventstore_cli", False)]:
            logger.removeHandler(old)
        handler._eventstore_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level)
    # "discarding closed connection …" and the like: the pool replaces the
    # connection, the store retries; what outlasts that is the command's error.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
