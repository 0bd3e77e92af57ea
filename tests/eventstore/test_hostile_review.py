"""Findings of the security review of issue 6 (hostile roles), each as a
test that fails on the code as reviewed and passes once it is fixed.

Every attacker is a fresh login role (conftest.login_role) with a schema of
its own, using plain psycopg or the library as an application would.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal

import msgspec
import psycopg
import pytest

from eventstore import EventStore, IdempotencyConflict, NewEvent, Settings, ValidationError
from eventstore.events import EventRegistry
from tests.support.database import login_role, run_cli

SETTINGS = Settings(pool_min_size=1, pool_max_size=2, retry_attempts=1)
APPEND = (
    "SELECT outcome, stream_id, first_version, last_version, positions, request_id "
    "FROM utcp.append_events(%s::text, %s::bigint, %s::text, %s::uuid, %s::jsonb)"
)


def test_a_key_claimed_by_one_role_does_not_answer_for_another(database_dsn: str) -> None:
    """Idempotency keys are one namespace for every writer, and the
    fingerprint covers the stream and the content but not the role that
    wrote it. An attacker that can guess a victim's key and request (keys
    derived from order ids, deterministic payloads) writes it first; the
    victim's append then comes back ``duplicate=True`` pointing at the
    attacker's event, the victim's own event is never written, and the log
    attributes the victim's trade to the attacker (``recorded_by``).

    Expected: a key recorded by another role is an IdempotencyConflict (or
    keys are scoped per role and the victim's append writes its own event).
    """
    stream = f"portfolio-victim-{uuid.uuid4().hex[:8]}"
    key = f"order-{uuid.uuid4().hex[:8]}"
    data = {"portfolio_id": stream, "note": "buy 100 AAPL"}
    with (
        login_role(database_dsn, "utcp_writer", own_schema=True) as attacker_dsn,
        login_role(database_dsn, "utcp_writer", own_schema=True) as victim_dsn,
    ):
        attacker = psycopg.conninfo.conninfo_to_dict(attacker_dsn)["user"]
        victim = psycopg.conninfo.conninfo_to_dict(victim_dsn)["user"]
        # The attacker, with plain psycopg: the same stream, type and data the
        # victim will send (ids generated, so not part of the fingerprint).
        events = [{"id": str(uuid.uuid4()), "type": "OrderNoted", "data": data}]
        with psycopg.connect(attacker_dsn, autocommit=True) as conn:
            row = conn.execute(
                APPEND, (stream, None, key, uuid.uuid4(), json.dumps(events))
            ).fetchone()
        assert row is not None and row[0] == "w"

        with EventStore.open(victim_dsn, SETTINGS) as store:
            try:
                result = store.append(stream, [NewEvent("OrderNoted", data)], idempotency_key=key)
            except IdempotencyConflict:
                result = None
        with psycopg.connect(database_dsn, autocommit=True) as admin:
            recorders = [
                r[0]
                for r in admin.execute(
                    "SELECT recorded_by FROM utcp.stored_events WHERE stream_id = %s "
                    "ORDER BY stream_version",
                    (stream,),
                )
            ]
        # The victim was told its event is in the log, but only the
        # attacker's is: this is what fails today.
        assert result is None or not result.duplicate, (
            f"{victim}'s append answered by {attacker}'s key: {result}, log recorders {recorders}"
        )
        if result is not None:
            assert recorders == [attacker, victim]


def test_no_utcp_function_is_executable_by_public(database_dsn: str) -> None:
    """The project's rule: every function in utcp revokes EXECUTE from
    PUBLIC and grants it to the groups that need it. ``utcp.event_content``
    (re-created by append_guarded with CREATE OR REPLACE, which keeps the
    old ACL) still has ``=X/root``, and ``utcp.refuse_change`` has the
    default ACL (NULL: PUBLIC may execute). Neither is exploitable as
    such (schema USAGE is still needed; a trigger function cannot be called
    directly), but the role matrix in docs/security.md is wrong for them."""
    with psycopg.connect(database_dsn, autocommit=True) as admin:
        public_exec = [
            r[0]
            for r in admin.execute(
                """
                SELECT p.oid::regprocedure::text
                  FROM pg_proc p
                 WHERE p.pronamespace = 'utcp'::regnamespace
                   AND (p.proacl IS NULL
                        OR EXISTS (SELECT FROM aclexplode(p.proacl) a
                                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
                 ORDER BY 1"""
            )
        ]
    assert public_exec == [], f"PUBLIC may execute: {public_exec}"


@pytest.mark.parametrize("group", ["utcp_reader", "utcp_writer", "utcp_projector"])
def test_low_groups_cannot_read_keys_or_leases(database_dsn: str, group: str) -> None:
    """Holds (kept as a regression): keys and leases are not readable below
    their owners (operators read keys, projectors the lease)."""
    with (
        login_role(database_dsn, group, own_schema=True) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM utcp.idempotency_keys LIMIT 1")
        if group != "utcp_projector":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM utcp.projection_leases LIMIT 1")


#: C1 controls (NEL, CSI, OSC, ...) and the Unicode bidi controls: a
#: terminal may act on them (NEL starts a new line, CSI/OSC start escape
#: sequences on terminals that honour C1 in UTF-8) or show text reordered
#: (U+202E), so an operator reading `eventstore tail` sees what the
#: attacker wants (a forged line, a reversed stream id).
_UNSAFE_OUTPUT = re.compile("[\u0080-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_cli_output_carries_no_terminal_controls_from_the_log(database_dsn: str) -> None:
    """Stream ids and payload strings refuse C0 controls (U+0000-U+001F,
    U+007F) but accept C1 controls (U+0080-U+009F) and bidi overrides, in
    the database and in the client alike. `eventstore tail` and `read` print
    them raw: a writer stores a stream id like ``"x\\u0085     99  portfolio-a
    v1  TradeCancelled ..."`` (NEL: a new line on terminals that honour C1)
    or ``"portfolio-\\u202eLPAA"`` (shown reversed), and the operator's
    terminal shows a forged line or a spoofed stream. Expected: the CLI
    escapes what is not printable (or the log refuses C1 and bidi controls
    in identifiers, as it refuses C0)."""
    tag = uuid.uuid4().hex[:8]
    streams = [f"x{tag}\u0085    99  forged-line", f"portfolio-\u202e{tag}", f"s{tag}"]
    with login_role(database_dsn, "utcp_writer", own_schema=True) as writer:
        with psycopg.connect(writer, autocommit=True) as conn:
            for stream in streams:
                events = [
                    {
                        "id": str(uuid.uuid4()),
                        "type": "Note",
                        "data": {"text": f"{tag}\u009b31m\u0085forged\u202e"},
                    }
                ]
                if stream != streams[-1]:
                    # Identifiers with C1 or bidirectional controls are refused
                    # by the database itself.
                    with pytest.raises(psycopg.Error) as refused:
                        conn.execute(APPEND, (stream, None, None, uuid.uuid4(), json.dumps(events)))
                    assert refused.value.sqlstate == "UT004"
                    continue
                conn.execute(APPEND, (stream, None, None, uuid.uuid4(), json.dumps(events)))
        streams = streams[-1:]  # payload strings may hold them: the CLI must escape
        with login_role(database_dsn, "utcp_reader") as reader:
            shown = run_cli("tail", "--dsn", reader, "--limit", "100000").stdout
            shown += run_cli("read", "--dsn", reader, streams[0]).stdout
    lines = [line for line in shown.splitlines() if tag in line]
    assert lines, shown[-2000:]
    unsafe = [line for line in lines if _UNSAFE_OUTPUT.search(line)]
    assert unsafe == [], f"terminal controls from the log reach the operator: {unsafe!r}"


def test_numbers_read_back_as_stored(database_dsn: str) -> None:
    """eventstore/limits.py: numbers are kept "between 1e-300 and 1e300 ...
    so every reader decodes them as what they are". Not so for a
    non-integer with more significant digits than a double holds: a writer
    calling utcp.append_events directly stores ``quantity:
    123456789012345.123456789012345678`` (a valid amount: under 1e15, 18
    places), the log (and its hash) keep every digit, and read_stream /
    read_all (and so the projections) return the float 123456789012345.12.
    What the audit log shows and what everything computed from it uses
    differ. (The Python client never sends numbers: Decimals travel as
    strings; the HTTP service and other clients may.) Expected: the
    database refuses numbers that do not read back exactly (more than 15
    significant digits in a non-integer), or readers decode them exactly."""
    stream = f"prec-{uuid.uuid4().hex[:8]}"
    written = "123456789012345.123456789012345678"
    events = f'[{{"id": "{uuid.uuid4()}", "type": "Note", "data": {{"quantity": {written}}}}}]'
    with login_role(database_dsn, "utcp_writer", own_schema=True) as writer:
        with psycopg.connect(writer, autocommit=True) as conn:
            try:
                conn.execute(APPEND, (stream, None, None, uuid.uuid4(), events))
            except psycopg.Error as exc:
                assert exc.sqlstate == "UT004", exc  # refused: what is asked
                return
            stored = conn.execute(
                "SELECT data ->> 'quantity' FROM utcp.stored_events WHERE stream_id = %s",
                (stream,),
            ).fetchone()
        assert stored is not None and stored[0] == written
        with EventStore.open(writer, SETTINGS) as store:
            read = store.read_stream(stream)[0].data["quantity"]
    assert Decimal(str(read)) == Decimal(written), f"the log holds {written}, readers get {read!r}"


class _OrderPlaced(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    symbol: str
    placed_at: dt.datetime


def test_registered_time_field_is_the_business_time(writer_dsn: str) -> None:
    """A discrepancy the review found: EventRegistry.register takes a
    ``time_field`` for any type and the client validates it as the business
    time, but the database derives ``occurred_at`` from its own table,
    utcp.event_time_fields (else ``data.occurred_at``, else the insert's
    clock): such a type was indexed at the time it was recorded, and
    find_events over business time missed it. Now an append of a registered
    type whose time field the database does not take is refused, naming
    the table to extend, and nothing is written (test_hostile_append shows a
    type the table knows indexed at its own time)."""
    registry = EventRegistry()
    registry.register("ReviewOrderPlaced", _OrderPlaced, time_field="placed_at")
    placed = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    stream = f"orders-{uuid.uuid4().hex[:8]}"
    event = _OrderPlaced(order_id="o-1", symbol="AAPL", placed_at=placed)
    with EventStore.open(writer_dsn, SETTINGS, registry=registry) as store:
        with pytest.raises(ValidationError) as info:
            store.append(stream, [NewEvent("ReviewOrderPlaced", event)])
        assert info.value.field == "events[0].type"
        assert "utcp.event_time_fields" in str(info.value) and "placed_at" in str(info.value)
        assert store.read_stream(stream) == []


@pytest.mark.parametrize(
    ("stream", "key"),
    [
        ("portfolio-Ame\u0301lie", None),  # decomposed: looks like portfolio-Amélie
        ("portfolio-\u200b42", None),  # zero-width space
        ("portfolio-42", "order-\u2066-1"),  # bidi isolate in the key
        ("portfolio-42", "cafe\u0301"),
    ],
)
def test_lookalike_identifiers_are_refused_by_the_database(
    database_dsn: str, stream: str, key: str | None
) -> None:
    """Ids that look the same but differ (Unicode normalisation, invisible
    or bidirectional characters) would write twice: the database refuses
    them whoever calls it, as the client does first."""
    events = [{"id": str(uuid.uuid4()), "type": "Note", "data": {"text": "x"}}]
    with (
        login_role(database_dsn, "utcp_writer", own_schema=True) as writer,
        psycopg.connect(writer, autocommit=True) as conn,
        pytest.raises(psycopg.Error) as refused,
    ):
        conn.execute(APPEND, (stream, None, key, uuid.uuid4(), json.dumps(events)))
    assert refused.value.sqlstate == "UT004"
