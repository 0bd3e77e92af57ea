"""The ``eventstore`` command line, run as a user runs them: as
subprocesses against the session's test database."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from eventstore import EventStore, NewEvent, StoredEvent, StoreStatus
from storectl import cli
from tests.support.database import deployed_database, dsn_for, run_cli
from tests.support.threads import line_queue

#: Generous: a subprocess on a loaded 2-core machine. Not a timing assertion,
#: only a bound on how long a broken test can hang.
LINE_TIMEOUT = 60.0


def es(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``eventstore ARGS --dsn DSN``, whatever its exit code."""
    return run_cli(*args, "--dsn", dsn, check=False)


def ok(dsn: str, *args: str) -> str:
    proc = es(dsn, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one line on stderr, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("eventstore: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def checkpoint_key(checkpoint: str) -> tuple[int, int]:
    tx, _, pos = checkpoint.partition("/")
    return int(tx), int(pos)


def unique_type() -> str:
    return f"Probe{uuid.uuid4().hex[:10]}"


# -- append and read ----------------------------------------------------------


def test_data_that_is_not_utf8_is_one_line(database_dsn: str, stream: str) -> None:
    """Bytes that are not UTF-8 in --data (they reach argv as surrogates):
    one line and exit 1, never a traceback; nothing written."""
    proc = run_cli(
        "append",
        stream,
        "Note",
        "--data",
        os.fsdecode(b'{"a": "\xff"}'),
        "--dsn",
        database_dsn,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["eventstore: error: --data is not valid UTF-8"]
    assert "Traceback" not in proc.stderr


def test_append_and_read_round_trip(database_dsn: str, stream: str, store: EventStore) -> None:
    out = ok(
        database_dsn,
        "append",
        stream,
        "FundsNoted",
        "--data",
        '{"amount": 1000.25, "currency": "USD", "exact": "0.1000000000000000055"}',
        "--metadata",
        '{"actor": "cli-test"}',
    )
    assert re.fullmatch(rf"appended {re.escape(stream)} v1 at position \d+\n", out), out

    out = ok(
        database_dsn,
        "append",
        stream,
        "FundsReleased",
        "--data",
        '{"amount": 12, "note": "fees"}',
        "--expected-version",
        "1",
        "--json",
    )
    result = json_lines(out)
    assert len(result) == 1
    assert result[0]["stream_id"] == stream
    assert (result[0]["first_version"], result[0]["last_version"]) == (2, 2)
    assert result[0]["duplicate"] is False

    # Human: one line per event, then a summary.
    lines = ok(database_dsn, "read", stream).splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(
        rf"\s*\d+  {re.escape(stream)} v1  FundsNoted  \d{{4}}-\d\d-\d\dT[\d:.]+Z  "
        r'\{"amount":1000.25,"currency":"USD","exact":"0.1000000000000000055"\}',
        lines[0],
    ), lines[0]
    assert f"{stream} v2  FundsReleased" in lines[1]
    assert lines[2] == f"-- 2 events of {stream}, v1..v2"

    # JSON lines: every StoredEvent field, bytes as hex, equal to the API's view.
    records = json_lines(ok(database_dsn, "read", stream, "--json"))
    stored = store.read_stream(stream)
    assert [set(r) for r in records] == [set(StoredEvent.__struct_fields__)] * 2
    for record, event in zip(records, stored, strict=True):
        assert record["position"] == event.position
        assert record["checkpoint"] == event.checkpoint
        assert record["event_id"] == str(event.event_id)
        assert record["stream_version"] == event.stream_version
        assert record["type"] == event.type
        assert record["data"] == event.data
        assert record["hash"] == event.hash.hex()
        assert record["prev_hash"] == (event.prev_hash.hex() if event.prev_hash else None)
    assert records[0]["data"] == {
        "amount": 1000.25,
        "currency": "USD",
        "exact": "0.1000000000000000055",
    }
    assert records[0]["metadata"] == {"actor": "cli-test"}
    assert records[1]["prev_hash"] == records[0]["hash"]
    assert result[0]["positions"] == [records[1]["position"]]

    only_second = json_lines(
        ok(database_dsn, "read", stream, "--from-version", "2", "--limit", "1", "--json")
    )
    assert [r["stream_version"] for r in only_second] == [2]


def test_registered_type_is_validated_and_keeps_decimals(
    database_dsn: str, store: EventStore
) -> None:
    trade = {
        "trade_id": f"cli-{uuid.uuid4().hex[:8]}",
        "portfolio_id": "cli",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 10,
        "price": 185.25,
        "executed_at": "2025-11-24T15:20:10-05:00",
    }
    stream = f"portfolio-cli{uuid.uuid4().hex[:8]}"
    ok(database_dsn, "append", stream, "TradeExecuted", "--data", json.dumps(trade))
    (event,) = store.read_stream(stream)
    assert event.data["price"] == "185.25"  # a Decimal, stored exactly
    assert event.symbol == "AAPL"

    bad = es(
        database_dsn,
        "append",
        stream,
        "TradeExecuted",
        "--data",
        json.dumps({**trade, "quantity": -1}),
    )
    assert_one_error_line(bad, "quantity")
    assert store.stream_version(stream) == 1


def test_expected_version_conflict_is_one_line(
    database_dsn: str, stream: str, store: EventStore
) -> None:
    ok(database_dsn, "append", stream, "Opened", "--data", "{}", "--expected-version", "no-stream")
    proc = es(
        database_dsn, "append", stream, "Opened", "--data", "{}", "--expected-version", "no-stream"
    )
    assert_one_error_line(proc, stream, "version 1")
    proc = es(database_dsn, "append", stream, "Noted", "--data", "{}", "--expected-version", "5")
    line = assert_one_error_line(proc, "is at version 1, not 5")
    assert line.count(stream) == 1, line  # the context once
    ok(
        database_dsn,
        "append",
        stream,
        "Noted",
        "--data",
        "{}",
        "--expected-version",
        "stream-exists",
    )
    assert store.stream_version(stream) == 2


def test_idempotency_key_duplicate_and_conflict(
    database_dsn: str, stream: str, store: EventStore
) -> None:
    key = f"cli-key-{uuid.uuid4().hex}"
    args = ("append", stream, "Deposited", "--data", '{"amount": "5.00"}')
    first = ok(database_dsn, *args, "--idempotency-key", key, "--json")
    again = ok(database_dsn, *args, "--idempotency-key", key, "--json")
    human = ok(database_dsn, *args, "--idempotency-key", key)
    (r1,), (r2,) = json_lines(first), json_lines(again)
    assert r1["duplicate"] is False
    assert r2["duplicate"] is True
    assert r2["positions"] == r1["positions"]
    assert human.startswith("duplicate: ")
    assert store.stream_version(stream) == 1

    other = es(
        database_dsn,
        "append",
        stream,
        "Deposited",
        "--data",
        '{"amount": "6.00"}',
        "--idempotency-key",
        key,
    )
    assert_one_error_line(other, key)
    assert store.stream_version(stream) == 1


@pytest.mark.parametrize(
    "case",
    [
        ("--data", '{"amount": 1', "--data is not valid JSON"),
        ("--data", "[1, 2]", "--data must be a JSON object"),
        ("--data", '{"amount": 0.1000000000000000055}', "--data: the number"),
        ("--metadata", "{'single': 'quotes'}", "--metadata is not valid JSON"),
    ],
)
def test_malformed_json_names_the_option_and_writes_nothing(
    database_dsn: str, stream: str, store: EventStore, case: tuple[str, str, str]
) -> None:
    option, value, needle = case
    args = ["append", stream, "Deposited", "--data", "{}"]
    if option == "--data":
        args[-1] = value
    else:
        args += [option, value]
    assert_one_error_line(es(database_dsn, *args), needle)
    assert store.stream_version(stream) == 0


def test_missing_dsn_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENTSTORE_DSN"}
    for args in (["read", "portfolio-1"], ["tail"], ["status"], ["verify"]):
        proc = subprocess.run(
            [sys.executable, "-m", "storectl", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert_one_error_line(proc, "--dsn", "EVENTSTORE_DSN")


def test_unreachable_database_is_one_line() -> None:
    proc = es(dsn_for(f"no_such_db_{uuid.uuid4().hex[:8]}"), "read", "portfolio-1")
    assert_one_error_line(proc, "cannot connect", "does not exist")


def test_usage_errors_exit_2(database_dsn: str, stream: str) -> None:
    for args in (
        ("append", stream, "T", "--data", "{}", "--expected-version", "soon"),
        ("append", stream, "T"),  # --data is required
        ("read", stream, "--limit", "0"),
        ("tail", "--poll-interval", "-1"),
    ):
        proc = es(database_dsn, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_broken_pipe_is_quiet(database_dsn: str, stream: str, store: EventStore) -> None:
    store.append(stream, [NewEvent("Tick", {"i": i}) for i in range(50)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "storectl", "read", stream, "--dsn", database_dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that has already exited
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert stderr == ""


# -- tail -----------------------------------------------------------------------


def _append_probe(dsn: str, stream: str, type_: str, n: int) -> dict[str, Any]:
    """Append one event; return it as `read --json` shows it."""
    ok(dsn, "append", stream, type_, "--data", json.dumps({"n": n}))
    return json_lines(ok(dsn, "read", stream, "--from-version", str(n), "--json"))[0]


def test_tail_from_a_checkpoint(database_dsn: str, stream: str) -> None:
    type_ = unique_type()
    first = _append_probe(database_dsn, stream, type_, 1)
    second = _append_probe(database_dsn, stream, type_, 2)
    third = _append_probe(database_dsn, stream, type_, 3)

    records = json_lines(ok(database_dsn, "tail", "--after", first["checkpoint"], "--json"))
    keys = [checkpoint_key(r["checkpoint"]) for r in records]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # the global order
    mine = [r for r in records if r["stream_id"] == stream]
    assert [r["event_id"] for r in mine] == [second["event_id"], third["event_id"]]
    assert set(mine[0]) == set(StoredEvent.__struct_fields__)

    typed = json_lines(
        ok(database_dsn, "tail", "--after", first["checkpoint"], "--types", type_, "--json")
    )
    assert [r["event_id"] for r in typed] == [second["event_id"], third["event_id"]]
    human = ok(
        database_dsn, "tail", "--after", first["checkpoint"], "--types", type_, "--limit", "1"
    ).splitlines()
    assert len(human) == 2
    assert f"{stream} v2  {type_}" in human[0]
    assert human[1] == (
        f"-- checkpoint {second['checkpoint']} (continue with --after {second['checkpoint']})"
    )
    rest = json_lines(
        ok(database_dsn, "tail", "--after", second["checkpoint"], "--types", type_, "--json")
    )
    assert [r["event_id"] for r in rest] == [third["event_id"]]
    assert ok(database_dsn, "tail", "--after", third["checkpoint"], "--types", type_) == (
        f"-- checkpoint {third['checkpoint']} (continue with --after {third['checkpoint']})\n"
    )


def test_tail_rejects_a_malformed_checkpoint(database_dsn: str) -> None:
    assert_one_error_line(es(database_dsn, "tail", "--after", "yesterday"), "checkpoint")


def _default_sigint() -> None:
    # A child of a shell's background job inherits SIGINT ignored; a user's
    # Ctrl-C reaches a foreground process, which this restores.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def follow(database_dsn: str) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storectl", "tail", "--follow", *args, "--dsn", database_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,  # noqa: PLW1509
        )
        procs.append(proc)
        return proc, line_queue(proc.stdout)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tail_follow_prints_new_events_and_stops_cleanly(
    database_dsn: str, stream: str, follow: Any, signum: signal.Signals
) -> None:
    type_ = unique_type()
    first = _append_probe(database_dsn, stream, type_, 1)
    second = _append_probe(database_dsn, stream, type_, 2)
    proc, lines = follow(
        "--after", first["checkpoint"], "--types", type_, "--poll-interval", "0.05", "--json"
    )
    # It is running and polling once it has printed what was already there...
    assert json.loads(lines.get(timeout=LINE_TIMEOUT))["event_id"] == second["event_id"]
    # ...and an event committed after that shows up on its own.
    third = _append_probe(database_dsn, stream, type_, 3)
    assert json.loads(lines.get(timeout=LINE_TIMEOUT))["event_id"] == third["event_id"]

    proc.send_signal(signum)
    assert proc.wait(timeout=LINE_TIMEOUT) == 0
    # --json: the checkpoint to resume from as one JSON line, no traceback.
    assert json.loads(proc.stderr.read()) == {"resume_after": third["checkpoint"]}
    assert lines.empty()


def test_tail_follow_human_reports_checkpoint_on_exit(
    database_dsn: str, stream: str, follow: Any
) -> None:
    type_ = unique_type()
    first = _append_probe(database_dsn, stream, type_, 1)
    second = _append_probe(database_dsn, stream, type_, 2)
    proc, lines = follow("--after", first["checkpoint"], "--types", type_)
    assert f"{stream} v2  {type_}" in lines.get(timeout=LINE_TIMEOUT)
    proc.terminate()
    assert proc.wait(timeout=LINE_TIMEOUT) == 0
    assert proc.stderr.read().strip() == (
        f"-- checkpoint {second['checkpoint']} (continue with --after {second['checkpoint']})"
    )


# -- status and verify --------------------------------------------------------


#: A shared server may hold a transaction open for longer than a minute
#: (another session's): the tests of the output do not depend on it.
CALM = {**os.environ, "EVENTSTORE_STALL_THRESHOLD": "1e9"}


def test_status(database_dsn: str, stream: str) -> None:
    ok(database_dsn, "append", stream, "Opened", "--data", "{}")
    proc = run_cli("--dsn", database_dsn, "status", env=CALM)  # --dsn before the command
    out = proc.stdout
    assert re.search(r"^events: +[1-9][\d,]*$", out, re.M), out
    assert re.search(r"^xid hazard: +none$", out, re.M), out
    assert re.search(r"^needs an operator: +no$", out, re.M), out
    assert "pid None" not in out
    proc = run_cli("status", "--json", "--dsn", database_dsn, env=CALM)
    (record,) = json_lines(proc.stdout)
    assert set(record) == {*StoreStatus.__struct_fields__, "needs_operator"}
    assert record["events"] >= 1 and record["streams"] >= 1
    assert record["xid_hazard"] is None
    assert record["needs_operator"] == []


def test_status_exits_1_when_readers_are_held_back_past_the_threshold(
    database_dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """An open transaction older than EVENTSTORE_STALL_THRESHOLD: exit 1,
    and the JSON line says why."""
    with psycopg.connect(database_dsn) as older:
        older.execute("SELECT pg_current_xact_id()").fetchone()
        env = {**os.environ, "EVENTSTORE_STALL_THRESHOLD": "0.001"}
        # Its age grows from here on: a bounded wait until status sees it.
        for _ in range(100):
            proc = run_cli("status", "--json", "--dsn", database_dsn, env=env, check=False)
            if proc.returncode == 1:
                break
        assert proc.returncode == 1, proc.stderr
        (record,) = json_lines(proc.stdout)
        assert any("held back" in why for why in record["needs_operator"]), record
        human = run_cli("status", "--dsn", database_dsn, env=env, check=False)
        assert human.returncode == 1
        assert "HOLDING BACK global readers" in human.stdout
        assert "needs an operator:     YES: readers held back longer than" in human.stdout
        older.rollback()
    bad = run_cli(
        "status",
        "--dsn",
        database_dsn,
        env={**os.environ, "EVENTSTORE_STALL_THRESHOLD": "soon"},
        check=False,
    )
    assert_one_error_line(bad, "stall_threshold")


def test_status_calls_out_a_stalled_horizon_and_the_xid_hazard(
    database_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both conditions take a cluster in trouble to produce for real (an open
    # transaction older than a minute, a logical restore); the store's own
    # tests cover how status() detects them. This checks what the CLI makes
    # of them.
    troubled = StoreStatus(
        events=10,
        streams=2,
        last_position=10,
        last_event_at=None,
        oldest_transaction_seconds=75.0,
        oldest_transaction_pid=4242,
        events_behind_horizon=3,
        xid_hazard="stored transaction ids are ahead of this cluster's",
    )
    monkeypatch.setattr(EventStore, "status", lambda self: troubled)
    assert cli.main(["status", "--dsn", database_dsn]) == 1
    out = capsys.readouterr().out
    assert "75.0 s (pid 4242) -- HOLDING BACK global readers" in out
    assert "events behind horizon: 3" in out
    assert "xid hazard:            stored transaction ids are ahead" in out
    assert cli.main(["status", "--json", "--dsn", database_dsn]) == 1
    assert json.loads(capsys.readouterr().out)["oldest_transaction_pid"] == 4242


@pytest.fixture
def tampered(admin: psycopg.Connection[Any], stream: str) -> Iterator[Any]:
    """Change one stored event behind the guards' back, and put it back."""
    saved: list[tuple[int, str]] = []

    guard = "ALTER TABLE utcp.stored_events {} TRIGGER stored_events_no_update_delete"

    def tamper(version: int) -> None:
        with admin.transaction():
            admin.execute(guard.format("DISABLE"))  # as a superuser could
            row = admin.execute(
                "SELECT data::text FROM utcp.stored_events "
                "WHERE stream_id = %s AND stream_version = %s",
                (stream, version),
            ).fetchone()
            assert row is not None
            saved.append((version, row[0]))
            admin.execute(
                'UPDATE utcp.stored_events SET data = data || \'{"amount": "0.01"}\' '
                "WHERE stream_id = %s AND stream_version = %s",
                (stream, version),
            )
            admin.execute(guard.format("ENABLE ALWAYS"))

    yield tamper
    with admin.transaction():
        admin.execute(guard.format("DISABLE"))
        for version, data in saved:
            admin.execute(
                "UPDATE utcp.stored_events SET data = %s::jsonb "
                "WHERE stream_id = %s AND stream_version = %s",
                (data, stream, version),
            )
        admin.execute(guard.format("ENABLE ALWAYS"))


def test_verify(database_dsn: str, stream: str, store: EventStore, tampered: Any) -> None:
    for n in range(3):
        ok(database_dsn, "append", stream, "Deposited", "--data", json.dumps({"amount": n}))
    # The whole log: other tests may have left their own deliberate damage,
    # so the CLI must agree with the API, whichever way it is.
    whole = store.verify_chain()
    proc = es(database_dsn, "verify")
    assert proc.returncode == (0 if whole.ok else 1), proc.stdout
    if whole.ok:
        assert proc.stdout.startswith(f"ok: the whole log, {whole.events_checked:,} events"), (
            proc.stdout
        )
    else:
        assert "PROBLEMS" in proc.stdout
    (report,) = json_lines(ok(database_dsn, "verify", "--stream", stream, "--json"))
    assert report == {
        "events_checked": 3,
        "streams_checked": 1,
        "problems": [],
        "anchors_checked": 0,  # anchors cover the whole log, not one stream
        "anchor_problems": [],
        "ok": True,
    }

    tampered(2)
    proc = es(database_dsn, "verify", "--stream", stream)
    assert proc.returncode == 1, proc.stdout
    assert re.search(rf"^\s*\d+  {re.escape(stream)} v2  ", proc.stdout, re.M), proc.stdout
    assert "PROBLEMS" in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = es(database_dsn, "verify", "--stream", stream, "--json")
    assert proc.returncode == 1
    (report,) = json_lines(proc.stdout)
    assert report["ok"] is False
    assert {p["stream_version"] for p in report["problems"]} >= {2}


def test_json_output_is_msgspec_decodable(database_dsn: str, stream: str) -> None:
    """--json lines decode back into StoredEvent once hex is turned back into bytes."""
    ok(database_dsn, "append", stream, "Opened", "--data", '{"symbol": "MSFT"}')
    (record,) = json_lines(ok(database_dsn, "read", stream, "--json"))
    record["hash"] = bytes.fromhex(record["hash"])
    event = msgspec.convert(record, StoredEvent)
    assert event.symbol == "MSFT" and event.stream_id == stream


def test_a_short_lived_append_still_wakes_listeners(database_dsn: str, stream: str) -> None:
    """`eventstore append` exits right after its append: the wake-up it owes
    live readers (a projection worker) is sent before it closes."""
    with psycopg.connect(database_dsn, autocommit=True) as listener:
        listener.execute("LISTEN utcp_events")
        ok(database_dsn, "append", stream, "NoteAdded", "--data", '{"text": "hello"}')
        woke = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in woke] == ["utcp_events"]


# -- answers that say what is the case ---------------------------------------------


def test_verify_of_a_stream_that_does_not_exist_exits_1(database_dsn: str) -> None:
    name = f"never-{uuid.uuid4().hex[:8]}"
    for extra in ((), ("--json",)):
        proc = es(database_dsn, "verify", "--stream", name, *extra)
        assert_one_error_line(proc, f"no stream {name} in the log", "no chain to verify")


def test_tail_after_a_checkpoint_beyond_the_head_exits_1(database_dsn: str, stream: str) -> None:
    _append_probe(database_dsn, stream, unique_type(), 1)
    beyond = f"{2**40}/{2**40}"
    for extra in ((), ("--json",)):
        proc = es(database_dsn, "tail", "--after", beyond, *extra)
        line = assert_one_error_line(
            proc,
            f"checkpoint {beyond} names no event in this log",
            "It is beyond the head of this log",
            "the newest readable event is at",
        )
        # (Readable: on a shared server another session's transaction may
        # hold the newest events back from readers for a while.)
        head = line.split("the newest readable event is at ")[1].split(")")[0]
        assert checkpoint_key(head) < checkpoint_key(beyond)


def test_tail_of_a_type_never_seen_says_so(database_dsn: str) -> None:
    never = unique_type()
    proc = es(database_dsn, "tail", "--types", never)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "-- no events yet (checkpoint: start of the log)\n"
    assert proc.stderr == (
        f"eventstore: note: no event of type {never!r} is in the log (yet); "
        "type names match exactly\n"
    )
    as_json = es(database_dsn, "tail", "--types", never, "--json")
    assert as_json.returncode == 0 and as_json.stdout == ""
    note, resume = json_lines(as_json.stderr)
    assert note["type"] == never and "no event of type" in note["note"]
    assert resume == {"resume_after": None}


def test_read_of_an_empty_stream_says_so(database_dsn: str, stream: str) -> None:
    assert (
        ok(database_dsn, "read", stream)
        == f"-- no stream {stream}: nothing was ever appended to it\n"
    )
    proc = es(database_dsn, "read", stream, "--json")
    assert proc.returncode == 0 and proc.stdout == ""
    assert json_lines(proc.stderr) == [
        {"stream_id": stream, "events": 0, "first_version": None, "last_version": None}
    ]
    ok(database_dsn, "append", stream, "Opened", "--data", "{}")
    assert ok(database_dsn, "read", stream, "--from-version", "2") == (
        f"-- no events in {stream} from v2 (it is at v1)\n"
    )
    assert ok(database_dsn, "read", stream).endswith(f"-- 1 event of {stream}, v1..v1\n")


def test_db_revert_without_the_schema_says_so(admin: psycopg.Connection[Any]) -> None:
    name = f"utcp_cli_bare_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        proc = run_cli("db", "revert", "--dsn", dsn_for(name))
        assert proc.stdout.startswith(
            f"nothing to revert: the utcp schema is not deployed in database {name}"
        ), proc.stdout
        (record,) = json_lines(run_cli("--json", "db", "revert", "--dsn", dsn_for(name)).stdout)
        assert record["reverted"] is False and record["database"] == name
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_json_on_an_empty_log_and_anchors_saved_from_it(tmp_path: Any) -> None:
    """--json is JSON lines also when there is nothing: `anchor` on an empty
    log, and `verify --anchor` passes over that line in a saved file."""
    with deployed_database("utcp_cli_empty") as dsn:
        (empty,) = json_lines(ok(dsn, "anchor", "--json"))
        assert empty == {
            "anchored": False,
            "events": 0,
            "message": "the log is empty: nothing to anchor",
        }
        assert ok(dsn, "anchor") == "the log is empty: nothing to anchor\n"
        tail = es(dsn, "tail", "--json")
        assert tail.returncode == 0 and tail.stdout == ""
        assert json_lines(tail.stderr) == [{"resume_after": None}]
        ok(dsn, "append", "portfolio-1", "Opened", "--data", "{}")
        saved = tmp_path / "anchors.jsonl"
        saved.write_text(ok(dsn, "anchor", "--json") + json.dumps(empty) + "\n")
        assert ok(dsn, "anchor", "--json").count("\n") == 1
        saved.write_text(json.dumps(empty) + "\n" + ok(dsn, "anchor", "--json"))
        checked = json_lines(ok(dsn, "verify", "--anchor", str(saved), "--json"))
        assert checked[-1]["ok"] is True and checked[-1]["saved_anchors_checked"] == 1
        human = ok(dsn, "verify", "--anchor", str(saved))
        assert "1 event in 1 stream, 1 anchor, 1 saved anchor" in human, human
