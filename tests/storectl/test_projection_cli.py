"""`eventstore project catch-up | run | rebuild | status`, as an operator
types them."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest

from eventstore import EventStore, Settings
from projections import ProjectionRunner
from projections.status import projection_status
from storectl import cli
from storectl.cli.output import decimal_text
from storectl.cli.progress import ProgressDisplay, progress_line
from tests.support.database import (
    WAIT,
    deployed_database,
    event_rows,
    login_role,
    one_value,
    run_cli,
    wait_until,
)
from tests.support.horizon import wait_for_horizon
from tests.support.trading_desk import DeskWriter, TradingDesk, stop_worker
from trading import StorageAdapter


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[EventStore]:
    with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=4)) as s:
        yield s


@pytest.fixture(scope="module")
def desk(store: EventStore, dsn: str) -> TradingDesk:
    desk = TradingDesk(StorageAdapter(store), portfolios=2, seed=21)
    for _ in range(120):
        desk.step()
    wait_for_horizon(dsn)  # every event readable: the counts below are exact
    return desk


def status_json(dsn: str) -> tuple[int, dict[str, object]]:
    proc = run_cli("project", "status", "--json", "--dsn", dsn, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_progress_line() -> None:
    line = progress_line(12_345, 23_456, 4_321.4)
    assert line == "[#####     ] 52% 12,345/23,456 events  4,321 ev/s"
    assert progress_line(0, 0, 0.0).startswith("[##########] 100% 0/0 events")
    assert progress_line(7, 5, 1.0).startswith("[##########] 100% 7/5")


def test_progress_display_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    display = ProgressDisplay("rebuild", out, tty=True)
    display.update(5, 10)
    display.finish()
    text = out.getvalue()
    assert text.startswith("\r[#####     ] 50% 5/10 events")
    assert text.endswith("\n") and text.count("\n") == 1

    plain = io.StringIO()
    display = ProgressDisplay("rebuild", plain, tty=False)
    display.update(5, 10)
    display.update(10, 10)  # within the period: not printed until the end
    display.finish()
    lines = plain.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "rebuild: [#####     ",
        "rebuild: [##########",
    ]
    assert "\r" not in plain.getvalue()


def test_an_error_starts_on_its_own_line_after_an_unfinished_bar() -> None:
    out = io.StringIO()
    display = ProgressDisplay("rebuild", out, tty=True)
    display.update(5, 10)
    ProgressDisplay.end_line()  # what the CLI does before printing an error
    assert out.getvalue().endswith("\n")
    ProgressDisplay.end_line()  # nothing unfinished now: nothing written
    assert out.getvalue().count("\n") == 1
    finished = io.StringIO()
    bar = ProgressDisplay("rebuild", finished, tty=True)
    bar.update(1, 2)
    bar.finish()
    ProgressDisplay.end_line()
    assert finished.getvalue().count("\n") == 1


def test_status_then_catch_up(dsn: str, store: EventStore, desk: TradingDesk) -> None:
    events = int(one_value(dsn, "SELECT count(*) FROM utcp.stored_events"))
    code, before = status_json(dsn)
    assert code == 1  # events wait and no worker is active: an operator's job
    assert before["needs_operator"] == [
        f"{events:,} events wait and no worker is active (start one: eventstore project run)"
    ]
    assert before["checkpoint"] == "0/0"
    assert before["lag_events"] == events
    assert isinstance(before["lag_seconds"], float) and before["lag_seconds"] > 0
    assert before["active_worker_pid"] is None and before["last_error"] is None

    proc = run_cli("project", "catch-up", "--batch-size", "50", "--dsn", dsn)
    assert proc.stdout.startswith(f"caught up: {events:,} events applied; checkpoint ")
    assert f"catch-up: [##########] 100% {events:,}/{events:,} events" in proc.stderr
    assert proc.stdout.startswith(f"caught up: {events:,} events applied")
    assert "ev/s" in proc.stderr

    last = one_value(
        dsn,
        "SELECT tx_id::text || '/' || position FROM utcp.stored_events "
        "ORDER BY tx_id DESC, position DESC LIMIT 1",
    )
    code, after = status_json(dsn)
    assert code == 0
    assert after["checkpoint"] == last == proc.stdout.split()[-1]
    assert after["events_processed"] == events
    assert after["lag_events"] == 0 and after["lag_seconds"] == 0.0
    assert after["needs_operator"] == []

    human = run_cli("project", "status", "--dsn", dsn)
    assert f"checkpoint:        {last}" in human.stdout
    assert "lag:               caught up" in human.stdout
    assert "worker:            none active" in human.stdout
    assert "last error:        none" in human.stdout
    assert human.stdout.rstrip().endswith("needs an operator: no")

    again = run_cli("project", "catch-up", "--dsn", dsn)
    assert again.stdout.startswith("caught up: 0 events applied")


def test_catch_up_ends_while_writers_keep_appending(
    dsn: str, store: EventStore, desk: TradingDesk
) -> None:
    """A catch-up applies what was committed when it started and exits,
    however fast writers append meanwhile (one event per batch here, slower
    than the writers)."""
    writers = [
        DeskWriter(desk),
        DeskWriter(TradingDesk(StorageAdapter(store), portfolios=1, seed=22)),
    ]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: all(w.desk.events > 20 for w in writers), "the writers to append")
        # Readable, not only committed (a transaction elsewhere in the
        # cluster can hold the readers' horizon back for a while).
        wait_for_horizon(dsn)
        wait_until(lambda: projection_status(store).lag_events > 0, "new events to be readable")
        proc = run_cli("project", "catch-up", "--batch-size", "1", "--dsn", dsn, timeout=WAIT)
    finally:
        for writer in writers:
            writer.finish()
    applied = int(proc.stdout.split()[2].replace(",", ""))
    checkpoint = proc.stdout.split()[-1]
    assert applied > 0
    assert projection_status(store).checkpoint == checkpoint
    assert event_rows(dsn, through=checkpoint) == projection_status(store).events_processed
    wait_for_horizon(dsn)  # what the writers appended last is readable
    again = run_cli("project", "catch-up", "--dsn", dsn)
    assert again.stdout.startswith("caught up: ")
    assert projection_status(store).lag_events == 0


def test_catch_up_fails_fast_while_a_worker_is_active(dsn: str, store: EventStore) -> None:
    holder = ProjectionRunner(store, dsn)
    assert holder.acquire()
    pid = holder.connection.info.backend_pid
    try:
        busy = run_cli("project", "catch-up", "--dsn", dsn, check=False)
        assert busy.returncode == 1
        assert busy.stderr.count("\n") == 1
        assert f"a worker is active (pid {pid}, " in busy.stderr
        assert "application 'eventstore-projection-trading'" in busy.stderr
        assert "--wait" in busy.stderr

        code, shown = status_json(dsn)
        assert code == 0
        assert code == 0 and shown["active_worker_pid"] == pid
        human = run_cli("project", "status", "--dsn", dsn)
        assert f"worker:            active (pid {pid}" in human.stdout

        # This holder never steps back: --wait gives up after the timeout.
        waited = run_cli(
            "project", "catch-up", "--wait", "--lock-timeout", "0.5", "--dsn", dsn, check=False
        )
        assert waited.returncode == 1
        assert f"a worker is active (pid {pid}, " in waited.stderr
        assert "and did not step back" in waited.stderr
    finally:
        holder.release()
    # Once it is gone, --wait gets the lock (a `project run` worker steps back).
    assert holder.acquire()
    threading.Timer(0.5, holder.release).start()
    proc = run_cli("project", "catch-up", "--wait", "--dsn", dsn)
    assert proc.stdout.startswith("caught up:")


def test_run_applies_new_events_and_stops_on_sigterm(
    dsn: str, store: EventStore, desk: TradingDesk
) -> None:
    run_cli("project", "catch-up", "--dsn", dsn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "storectl", "project", "run", "--verbose", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: projection_status(store).active_worker_pid is not None, "the worker")
        before = projection_status(store).events_processed
        desk.step()
        wait_for_horizon(dsn)
        wait_until(lambda: projection_status(store).events_processed == before + 1, "the event")
        assert projection_status(store).lag_events == 0
    finally:
        code, err = stop_worker(proc)
    assert code == 0, err
    assert "projection trading: active worker" in err
    assert "projection trading: +1 event, checkpoint " in err
    # Every line of the worker's log starts with a UTC timestamp.
    for line in err.strip().splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z eventstore: ", line), line
    assert err.rstrip().endswith("projection trading: stopped")
    assert projection_status(store).active_worker_pid is None


def _sigint_default() -> None:
    # A suite started as a background job (`make test &`) ignores SIGINT, and
    # an ignored signal stays ignored across exec: give the worker the
    # SIGINT of a foreground process, which is what this test is about.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_run_stops_on_sigint_too(dsn: str, store: EventStore) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "storectl", "project", "run", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # noqa: PLW1509 - no threads start before exec
    )
    try:
        wait_until(lambda: projection_status(store).active_worker_pid is not None, "the worker")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_rebuild_output(dsn: str, store: EventStore, desk: TradingDesk) -> None:
    run_cli("project", "catch-up", "--dsn", dsn)
    clean = run_cli("project", "rebuild", "--batch-size", "40", "--dsn", dsn)
    assert "no differences: the live tables match the rebuild row for row" in clean.stdout
    assert "swapped: the rebuilt tables are live" in clean.stdout
    assert "rebuild: [##########] 100%" in clean.stderr and "ev/s" in clean.stderr
    assert "rebuild: waiting for the live worker to pause" in clean.stderr
    assert "\r" not in clean.stderr  # not a terminal: plain lines

    portfolio = desk.portfolios[0]
    cash = one_value(dsn, "SELECT cash FROM utcp.portfolios WHERE portfolio_id = %s", (portfolio,))
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "UPDATE utcp.portfolios SET cash = cash + 0.01 WHERE portfolio_id = %s", (portfolio,)
        )

    dry = run_cli("project", "rebuild", "--dry-run", "--dsn", dsn, check=False)
    assert dry.returncode == 3, dry.stderr
    assert "DIFFERENCES: 1 row differs" in dry.stdout
    assert f"  portfolios (portfolio_id='{portfolio}'):" in dry.stdout
    # Decimals as plain digits, without the column's trailing zeros.
    live, rebuilt = decimal_text(cash + Decimal("0.01")), decimal_text(cash)
    assert f"      cash: live {live}  rebuilt {rebuilt}" in dry.stdout
    assert "dry run: nothing swapped" in dry.stdout

    as_json = run_cli("project", "rebuild", "--json", "--dsn", dsn, check=False)
    assert as_json.returncode == 3
    report = json.loads(as_json.stdout)
    assert report["swapped"] is True and report["ok"] is False
    [difference] = report["differences"]
    assert difference["table"] == "portfolios"
    assert difference["key"] == {"portfolio_id": portfolio}
    assert Decimal(difference["live"]["cash"]) - Decimal(difference["rebuilt"]["cash"]) == Decimal(
        "0.01"
    )
    assert difference["rebuilt"]["cash"] == decimal_text(cash)

    repaired = run_cli("project", "rebuild", "--dsn", dsn)
    assert "no differences" in repaired.stdout
    assert (
        one_value(dsn, "SELECT cash FROM utcp.portfolios WHERE portfolio_id = %s", (portfolio,))
        == cash
    )
    run_cli("db", "verify", "--dsn", dsn)


def test_rebuild_help_says_what_happens_to_differences() -> None:
    text = run_cli("project", "rebuild", "--help").stdout
    assert "--dry-run" in text and "EVEN WHEN ROWS" in text
    assert "exit status: 0 no differences; 3 rows differed" in text
    bad = run_cli("project", "rebuild", "nonsense", check=False)
    assert bad.returncode == 2


def test_status_shows_events_waiting_behind_an_open_transaction(
    dsn: str, store: EventStore, desk: TradingDesk
) -> None:
    wait_for_horizon(dsn)
    run_cli("project", "catch-up", "--dsn", dsn)
    with psycopg.connect(dsn) as older:  # a transaction with an id, left open
        older.execute("SELECT pg_current_xact_id()").fetchone()
        desk.step()
        code, shown = status_json(dsn)
        assert code == 0
        assert (shown["lag_events"], shown["waiting_events"]) == (0, 1)
        human = run_cli("project", "status", "--dsn", dsn).stdout
        assert "waiting:           1 committed event behind an open transaction" in human
        older.rollback()
    wait_for_horizon(dsn)  # ours ended; another session's may still run
    _, after = status_json(dsn)
    assert (after["lag_events"], after["waiting_events"]) == (1, 0)


# -- one clear line, never a traceback ----------------------------------------------


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("eventstore: error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def test_a_role_without_the_rights_gets_one_line(dsn: str, desk: TradingDesk) -> None:
    event = json.loads(run_cli("tail", "--limit", "1", "--json", "--dsn", dsn).stdout)
    with login_role(dsn, "utcp_writer") as writer:
        for command in (
            ("catch-up",),
            ("run", "--poll-interval", "0.2"),
            ("rebuild", "--lock-timeout", "1"),
            ("skip", event["event_id"], "--reason", "not mine to decide"),
        ):
            proc = run_cli("project", *command, "--dsn", writer, check=False, timeout=WAIT)
            one_error_line(proc, "permission denied")


def test_a_partly_deployed_schema_gets_one_line() -> None:
    with deployed_database("utcp_cli_partial") as partial:
        with psycopg.connect(partial, autocommit=True) as admin:
            admin.execute("DROP TABLE utcp.projection_checkpoints CASCADE")
        for command in (
            ("catch-up",),
            ("run", "--poll-interval", "0.2"),
            ("rebuild", "--lock-timeout", "1"),
            ("status",),
        ):
            proc = run_cli("project", *command, "--dsn", partial, check=False, timeout=WAIT)
            one_error_line(proc, "eventstore db deploy")


def _lost(*args: object, **kwargs: object) -> None:
    raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")


def test_a_lost_connection_is_one_line(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server ends the worker's connection (AdminShutdown): catch-up and
    rebuild stop with one line; a `run` worker goes back to standby."""
    monkeypatch.setattr(ProjectionRunner, "catch_up", _lost)
    assert cli.main(["project", "catch-up", "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "eventstore: error: projection 'trading': lost the connection to PostgreSQL: "
        "terminating connection due to administrator command (sqlstate='57P01')"
    )
    assert cli.main(["project", "rebuild", "--dsn", dsn]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("eventstore: error: projection 'trading': lost the connection")

    calls: list[int] = []

    def run_once_lost(self: ProjectionRunner, stop: threading.Event, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            _lost()
        stop.set()  # as SIGTERM would

    monkeypatch.setattr(ProjectionRunner, "run", run_once_lost)
    assert cli.main(["project", "run", "--dsn", dsn]) == 0
    err = capsys.readouterr().err
    assert len(calls) == 2
    assert "projection trading: lost the connection to PostgreSQL: terminating connection" in err
    assert "; standby again in 1 s" in err
    assert err.rstrip().endswith("eventstore: projection trading: stopped")


def test_status_and_catch_up_speak_json(dsn: str, store: EventStore) -> None:
    proc = run_cli("--json", "project", "catch-up", "--dsn", dsn)
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(record) == {"projection", "applied", "checkpoint", "stopped"}
    assert proc.stderr == ""  # no progress bar with --json
    code, shown = status_json(dsn)
    assert shown["checkpoint"] == record["checkpoint"] or code == 1
