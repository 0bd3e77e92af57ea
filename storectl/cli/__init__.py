"""The ``eventstore`` command line.

One module per command group (:mod:`.db`, :mod:`.events`: append, read,
tail; :mod:`.verify`: verify, anchor; :mod:`.status`; :mod:`.project`),
each adding its commands with ``add_parser(commands)``; what they share in
:mod:`.common` (database, settings, options, exit codes, errors, logging)
and :mod:`.output` (how everything prints). The work itself is library
code (``eventstore``, ``projections``) that other programs call too.

Every command takes ``--dsn`` (before or after the command; default
``$EVENTSTORE_DSN``) and, when it prints, ``--json`` (JSON lines). Errors
print one line on stderr; the exit codes are in :data:`EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from types import ModuleType

import psycopg

from eventstore import EventStoreError
from eventstore.settings import redact

from . import db, events, project, status, verify
from .common import (
    DSN_ENV,
    EXIT_BROKEN_PIPE,
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    add_dsn,
    add_json,
    configure_logging,
    error_line,
)
from .output import printable
from .progress import ProgressDisplay

__all__ = ["EXIT_BROKEN_PIPE", "build_parser", "main", "version"]

#: The distribution that installs the ``eventstore`` command.
DISTRIBUTION = "utcp-eventstore"

#: The command groups, in the order ``--help`` lists them.
COMMAND_GROUPS: tuple[ModuleType, ...] = (db, events, status, verify, project)
#: Groups of other program packages, each a module with ``add_parser(commands)``
#: like the ones above, listed when they can be imported (the HTTP service's
#: ``serve`` and ``keys`` need its optional dependencies).
OPTIONAL_GROUPS: tuple[str, ...] = ("storectl.service.command",)


def _groups() -> list[ModuleType]:
    groups = list(COMMAND_GROUPS)
    for name in OPTIONAL_GROUPS:
        try:
            groups.append(importlib.import_module(name))
        except ModuleNotFoundError:
            continue  # not installed (or its extra is not): no such commands
    return groups


def version() -> str:
    """The installed package's version (the package's own when not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import eventstore  # noqa: PLC0415

        return str(getattr(eventstore, "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventstore",
        description="The trading assistant's audit store.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    add_dsn(parser, top=True)
    add_json(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _groups():
        group.add_parser(commands)
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
    # The libraries' warnings as the command's own lines (JSON with --json);
    # the driver's and the pool's not at all.
    configure_logging(logging.WARNING, as_json=args.json)
    try:
        code = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except EventStoreError as exc:
        ProgressDisplay.end_line()
        print(error_line(exc), file=sys.stderr)
        return EXIT_ERROR
    except psycopg.Error as exc:
        # The libraries map their driver errors; this is the last line of
        # defence that keeps a traceback from a user.
        ProgressDisplay.end_line()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = redact(text, getattr(args, "dsn", None) or os.environ.get(DSN_ENV))
        print(f"eventstore: error: database: {printable(text)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        ProgressDisplay.end_line()
        return EXIT_INTERRUPTED
    return code
