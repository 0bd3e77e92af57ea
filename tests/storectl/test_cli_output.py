"""How the command line prints, and its parser: no database needed."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest

from eventstore import StorageUnavailable, ValidationError, WrongExpectedVersion
from projections.errors import projection_failure
from storectl import cli
from storectl.cli.common import cli_settings, configure_logging, error_line
from storectl.cli.output import count, decimal_text, emit, jsonable, number, seconds


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0E-12", "0"),
        ("-0E-5", "0"),
        ("230.500000000000", "230.5"),
        ("1E+3", "1000"),
        ("100", "100"),
        ("0.000000000000000001", "0.000000000000000001"),
        ("-12.340", "-12.34"),
        ("99999999999999.999999999999999999", "99999999999999.999999999999999999"),
    ],
)
def test_decimals_are_plain_digits(value: str, text: str) -> None:
    assert decimal_text(Decimal(value)) == text
    assert Decimal(text) == Decimal(value)  # the same number


def test_json_lines_normalise_decimals_everywhere() -> None:
    class Row(msgspec.Struct):
        cash: Decimal
        rows: list[dict[str, Any]]

    record = jsonable(Row(Decimal("0E-12"), [{"qty": Decimal("230.500000000000"), "n": 3}]))
    assert record == {"cash": "0", "rows": [{"qty": "230.5", "n": 3}]}
    out = io.StringIO()
    emit({"text": "a\u202eb\x85"}, out)  # bidi override, NEL: escaped, same JSON string
    line = out.getvalue()
    assert "\u202e" not in line and "\x85" not in line
    assert json.loads(line) == {"text": "a\u202eb\x85"}


def test_counts_agree_and_are_grouped() -> None:
    assert count(1, "event") == "1 event"
    assert count(0, "event") == "0 events"
    assert count(12345, "event") == "12,345 events"
    assert count(2, "idempotency key") == "2 idempotency keys"
    assert number(1234567) == "1,234,567"
    assert seconds(4.25) == "4.2 s"


def test_an_errors_context_appears_once() -> None:
    exc = WrongExpectedVersion(
        "stream 'portfolio-1' is at version 3, not 2",
        expected=2,
        actual=3,
        operation="append",
        stream_id="portfolio-1",
        sqlstate="UT001",
    )
    line = error_line(exc)
    assert (
        line == "eventstore: error: stream 'portfolio-1' is at version 3, not 2 (sqlstate='UT001')"
    )
    field = ValidationError("--data is not valid JSON", field="data")
    assert error_line(field) == "eventstore: error: --data is not valid JSON"
    multi = StorageUnavailable("first\nsecond", operation="open")
    assert "\n" not in error_line(multi)


def test_library_warnings_are_the_commands_lines_and_psycopg_is_quiet() -> None:
    out = io.StringIO()
    configure_logging(logging.WARNING, stream=out)
    try:
        logging.getLogger("psycopg.pool").warning("discarding closed connection: %s", "x")
        logging.getLogger("eventstore").warning("read_all: transient failure, retrying: %s", "x")
        logging.getLogger("eventstore").error("reported by the command itself, once")
        logging.getLogger("projections").info("below the level")
        assert out.getvalue() == ("eventstore: warning: read_all: transient failure, retrying: x\n")
        stamped = io.StringIO()
        configure_logging(logging.INFO, timestamps=True, stream=stamped)
        logging.getLogger("projections").info("projection trading: stopped")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z eventstore: projection trading: stopped\n",
            stamped.getvalue(),
        ), stamped.getvalue()
        as_json = io.StringIO()
        configure_logging(logging.INFO, as_json=True, stream=as_json)
        logging.getLogger("projections").info("projection trading: stopped")
        record = json.loads(as_json.getvalue())
        assert record["level"] == "info" and record["message"] == "projection trading: stopped"
    finally:
        configure_logging(logging.WARNING)


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Any:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaf_parsers(sub, (*path, name))


def test_every_command_takes_json_and_dsn_before_or_after() -> None:
    parser = cli.build_parser()
    leaves = dict(_leaf_parsers(parser))
    assert {" ".join(p) for p in leaves} >= {
        "db deploy",
        "db verify",
        "db revert",
        "db status",
        "append",
        "read",
        "tail",
        "status",
        "verify",
        "anchor",
        "project catch-up",
        "project run",
        "project rebuild",
        "project skip",
        "project status",
    }
    needed = {
        "append": ["s", "T", "--data", "{}"],
        "read": ["s"],
        "project skip": ["00000000-0000-0000-0000-000000000000", "--reason", "r"],
        "keys add": ["k", "--role", "reader"],
        "keys revoke": ["k"],
    }
    for path in leaves:
        extra = needed.get(" ".join(path), [])
        after = parser.parse_args([*path, *extra, "--json", "--dsn", "A"])
        assert (after.json, after.dsn) == (True, "A"), path
        before = parser.parse_args(["--json", "--dsn", "B", *path, *extra])
        assert (before.json, before.dsn) == (True, "B"), path
        plain = parser.parse_args([*path, *extra])
        assert (plain.json, plain.dsn) == (False, None), path


def test_version_and_exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"eventstore {cli.version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", cli.version())
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "exit status:" in text and "EVENTSTORE_STALL_THRESHOLD" in text
    assert "141" in text and "130" in text


def test_the_pool_sizes_come_from_the_environment_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EVENTSTORE_POOL_MIN_SIZE", raising=False)
    monkeypatch.delenv("EVENTSTORE_POOL_MAX_SIZE", raising=False)
    small = cli_settings()
    assert (small.pool_min_size, small.pool_max_size) == (1, 2)
    monkeypatch.setenv("EVENTSTORE_POOL_MAX_SIZE", "7")
    assert cli_settings().pool_max_size == 7
    monkeypatch.setenv("EVENTSTORE_POOL_MIN_SIZE", "5")
    monkeypatch.delenv("EVENTSTORE_POOL_MAX_SIZE")
    assert (cli_settings().pool_min_size, cli_settings().pool_max_size) == (5, 5)
    monkeypatch.setenv("EVENTSTORE_STALL_THRESHOLD", "120")
    assert cli_settings().stall_threshold == 120.0


@pytest.mark.parametrize(
    ("error", "kind", "needle"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), "StorageUnavailable", "lost"),
        (psycopg.OperationalError("server closed the connection"), "StorageUnavailable", "lost"),
        (psycopg.errors.InsufficientPrivilege("denied"), "StorageError", "utcp_projector"),
        (psycopg.errors.UndefinedTable("no table"), "SchemaNotDeployed", "db deploy"),
        (psycopg.errors.UndefinedFunction("no fn"), "SchemaNotDeployed", "partly deployed"),
    ],
)
def test_a_projections_driver_errors_become_the_stores(
    error: psycopg.Error, kind: str, needle: str
) -> None:
    mapped = projection_failure(error, "catch-up", "trading")
    assert type(mapped).__name__ == kind
    assert needle in mapped.message and "projection 'trading'" in mapped.message
