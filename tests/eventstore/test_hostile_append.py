"""Hostile roles against the write path (issue 6): a writer calling
``utcp.append_events`` directly, with plain psycopg, as an attacker would.

Each attacker is a fresh login role (conftest.login_role), dropped with all
it owns afterwards. Attacks that plant functions or tamper as a superuser
run in a database of their own (made by `eventstore db deploy`, dropped at
the end), so the session's shared database stays clean.

``raw_append`` speaks whichever signature is deployed: the guarded one
(sqitch/deploy/append_guarded.sql) or the old one that took the
fingerprint, symbol and business time from its caller. On the old schema
the attacks succeed and these tests fail at their assertions.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from eventstore import (
    EventStore,
    IdempotencyConflict,
    NewEvent,
    Settings,
    StorageError,
    ValidationError,
    limits,
)
from tests.support.database import deployed_database, login_role, pooled_connection
from trading import StorageAdapter, trading_registry
from trading.events import ProjectionEventSkipped

REGISTRY = trading_registry()

NEW_SIGNATURE = "utcp.append_events(text, bigint, text, uuid, jsonb)"
OLD_SIGNATURE = "utcp.append_events(text, bigint, text, bytea, uuid, jsonb)"
SETTINGS = Settings(pool_min_size=1, pool_max_size=2, retry_attempts=1)
#: Decimals as JSON numbers, exactly as written (1e5000 included).
_dumps = msgspec.json.Encoder(decimal_format="number").encode


@pytest.fixture(scope="module")
def hostile_dsn() -> Iterator[str]:
    """A database of this module's own: attackers plant functions here."""
    with deployed_database("utcp_hostile") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def root_store(hostile_dsn: str) -> Iterator[EventStore]:
    """The store as the operator who deployed it (a superuser)."""
    with EventStore.open(hostile_dsn, SETTINGS) as store:
        yield store


@pytest.fixture
def attacker(hostile_dsn: str) -> Iterator[str]:
    """A writer with a schema of its own (named like the role)."""
    with login_role(hostile_dsn, "utcp_writer", own_schema=True) as dsn:
        yield dsn


def role_of(dsn: str) -> str:
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    assert isinstance(user, str)
    return user


def is_superuser(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert row is not None
    return bool(row[0])


def raw_append(
    conn: psycopg.Connection[Any],
    stream: str,
    events: list[dict[str, Any]],
    *,
    key: str | None = None,
    expected: int | None = None,
) -> tuple[Any, ...]:
    """Call utcp.append_events as a writer's own code would. Each event is
    {type, data, metadata?, id?, symbol?, occurred_at?}: on the old schema
    the caller's symbol, time and fingerprint go in as they are; the guarded
    one takes no such fields."""
    new = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (NEW_SIGNATURE,)).fetchone()
    wire = [
        {
            "id": str(e.get("id") or uuid.uuid4()),
            "type": e["type"],
            "data": e["data"],
            "metadata": e.get("metadata"),
        }
        for e in events
    ]
    if new and new[0]:
        for w, e in zip(wire, events, strict=True):
            w.update({k: e[k] for k in ("id_given", "recorded_by") if k in e})
        row = conn.execute(
            "SELECT * FROM utcp.append_events(%s::text, %s::bigint, %s::text, %s::uuid, %s::jsonb)",
            (stream, expected, key, uuid.uuid4(), Jsonb(wire, dumps=_dumps)),
        ).fetchone()
    else:
        for w, e in zip(wire, events, strict=True):
            w.update({k: e[k] for k in ("symbol", "occurred_at") if k in e})
        row = conn.execute(
            "SELECT * FROM utcp.append_events(%s::text, %s::bigint, %s::text, %s::bytea,"
            " %s::uuid, %s::jsonb)",
            (stream, expected, key, b"\x00" * 32, uuid.uuid4(), Jsonb(wire, dumps=_dumps)),
        ).fetchone()
    assert row is not None
    return tuple(row)


def read_whole_log(store: EventStore) -> int:
    """Page through the whole global log (what every projection does)."""
    count, after = 0, None
    while True:
        page = store.read_all(after=after, limit=500)
        if not page:
            return count
        count += len(page)
        after = page[-1].checkpoint


def trade_data(symbol: str = "AAPL", when: str = "2026-03-02T15:30:00Z") -> dict[str, Any]:
    return {
        "trade_id": f"t-{uuid.uuid4().hex[:8]}",
        "portfolio_id": "p-hostile",
        "symbol": symbol,
        "side": "buy",
        "quantity": "10",
        "price": "101.5",
        "fees": "0",
        "executed_at": when,
    }


# -- search_path: a writer's functions never run as the owner -----------------


def test_a_planted_sha256_does_not_run_as_the_owner(
    hostile_dsn: str, attacker: str, root_store: EventStore
) -> None:
    role = role_of(attacker)
    stream = f"victim-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        schema = sql.Identifier(role)
        # everything the old body called unqualified, made to escalate
        for signature, returns, value in (
            ("sha256(bytea)", "bytea", "'\\x00'::bytea"),
            ("jsonb_array_length(jsonb)", "int", "1"),
            ("convert_to(text, name)", "bytea", "'\\x00'::bytea"),
        ):
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.{} RETURNS {} LANGUAGE plpgsql AS $$ BEGIN"
                    " EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);"
                    " RETURN {}; END $$"
                ).format(schema, sql.SQL(signature), sql.SQL(returns), sql.SQL(value))
            )
        conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(schema))
        raw_append(conn, stream, [{"type": "Planted", "data": {"n": 1}}])
    with psycopg.connect(hostile_dsn, autocommit=True) as admin:
        assert not is_superuser(admin, role), "the writer made itself superuser"
    report = root_store.verify_chain(stream)
    assert report.ok and report.events_checked == 1  # the stored hash is the real one


def test_a_public_concat_ws_is_not_called_by_event_content(
    hostile_dsn: str, attacker: str, root_store: EventStore
) -> None:
    """Where public is writable (PostgreSQL 14's default), no schema of its
    own is needed: a ten-argument concat_ws in public would win."""
    role = role_of(attacker)
    with psycopg.connect(hostile_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    with psycopg.connect(attacker, autocommit=True) as conn:
        args = ", ".join(["text"] * 10)
        conn.execute(
            f"CREATE FUNCTION public.concat_ws({args}) RETURNS text LANGUAGE plpgsql AS $$"
            " BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);"
            " RETURN 'forged'; END $$"
        )
        raw_append(conn, f"victim-{uuid.uuid4().hex[:8]}", [{"type": "Planted", "data": {}}])
    with psycopg.connect(hostile_dsn, autocommit=True) as admin:
        # an operator verifying scheme-1 events runs event_content as a superuser
        row = admin.execute(
            "SELECT utcp.event_content('00000000-0000-0000-0000-000000000001', 's-1', 1, 'T',"
            " '{}', NULL, NULL, 'epoch', 'epoch')"
        ).fetchone()
        assert row is not None
        content = bytes(row[0])
        assert content.startswith(b"00000000-0000-0000-0000-000000000001\x1fs-1\x1f1\x1fT\x1f{}")
        assert b"forged" not in content
        assert not is_superuser(admin, role), "public.concat_ws ran as a superuser"
    assert root_store.verify_chain().ok


# -- exact types: no overload is preferred -------------------------------------


def test_an_overload_with_looser_types_is_not_called(
    hostile_dsn: str, root_store: EventStore
) -> None:
    """Overloads whose argument types match what psycopg sends (int2 for a
    small int) better than the real signature: the store's append still
    reaches the real function."""
    body = (
        'RETURNS TABLE (outcome "char", stream_id text, first_version bigint,'
        " last_version bigint, positions bigint[], request_id uuid{extra}) LANGUAGE sql AS $$"
        " SELECT 'w'::\"char\", 'REWRITTEN'::text, 1::bigint, 1::bigint, ARRAY[-1]::bigint[],"
        " gen_random_uuid(){extra_value} $$"
    )
    overloads = [
        ("(text, int2, text, uuid, jsonb)", body.format(extra="", extra_value="")),
        (
            "(text, int2, text, bytea, uuid, jsonb)",
            body.format(extra=", fingerprint bytea", extra_value=", NULL::bytea"),
        ),
    ]
    with psycopg.connect(hostile_dsn, autocommit=True) as admin:
        for args, definition in overloads:
            admin.execute(f"CREATE FUNCTION utcp.append_events{args} {definition}")
            admin.execute(f"GRANT EXECUTE ON FUNCTION utcp.append_events{args} TO utcp_writer")
    try:
        stream = f"overload-{uuid.uuid4().hex[:8]}"
        result = root_store.append(stream, [NewEvent("Real", {"n": 1})], expected_version=0)
        again = root_store.append(stream, [NewEvent("Real", {"n": 2})], expected_version=1)
        assert (result.stream_id, again.stream_id) == (stream, stream)
        assert -1 not in result.positions + again.positions
        assert [e.data for e in root_store.read_stream(stream)] == [{"n": 1}, {"n": 2}]
    finally:
        with psycopg.connect(hostile_dsn, autocommit=True) as admin:
            for args, _ in overloads:
                admin.execute(f"DROP FUNCTION utcp.append_events{args}")


# -- poison pills: refused by the database, whoever calls it -------------------

DEEP = msgspec.Raw(b'{"a":' * 5000 + b"1" + b"}" * 5000)


POISON = [
    ("infinity", "", [{"type": "Poison", "data": {"occurred_at": "infinity"}}], "occurred_at"),
    (
        "year 10000",
        "",
        [{"type": "Poison", "data": {"occurred_at": "10000-01-01T00:00:00Z"}}],
        "occurred_at",
    ),
    (
        "zone-less time",
        "",
        [{"type": "TradeExecuted", "data": trade_data(when="2026-03-02T15:30:00")}],
        "executed_at",
    ),
    ("1e5000", "", [{"type": "Poison", "data": {"n": Decimal("1e5000")}}], "events[0].data"),
    ("1e-400", "", [{"type": "Poison", "data": {"n": Decimal("1e-400")}}], "events[0].data"),
    ("5000 levels", "", [{"type": "Poison", "data": DEEP}], "events[0].data"),
    ("empty stream id", "-", [{"type": "Poison", "data": {}}], "stream_id"),
    ("blank stream id", "\u3000", [{"type": "Poison", "data": {}}], "stream_id"),
    ("bad type", "", [{"type": "1 bad", "data": {}}], "events[0].type"),
    ("data not an object", "", [{"type": "Poison", "data": [1]}], "events[0].data"),
    ("metadata a list", "", [{"type": "Poison", "data": {}, "metadata": [1]}], "metadata"),
    ("symbol a number", "", [{"type": "Poison", "data": {"symbol": 5}}], "symbol"),
    (
        "duplicate ids",
        "",
        [
            {"type": "Poison", "data": {}, "id": "0190c2a8-0000-7000-8000-00000000dead"},
            {"type": "Poison", "data": {}, "id": "0190c2a8-0000-7000-8000-00000000dead"},
        ],
        "events",
    ),
]


@pytest.mark.parametrize(
    ("stream", "events", "field"),
    [pytest.param(s, e, f, id=name) for name, s, e, f in POISON],
)
def test_poison_pills_are_refused_by_the_database(
    attacker: str, root_store: EventStore, stream: str, events: list[dict[str, Any]], field: str
) -> None:
    stream = stream.strip("-") if stream == "-" else stream or f"poison-{uuid.uuid4().hex[:8]}"
    before = read_whole_log(root_store)
    with psycopg.connect(attacker, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, events)
        assert info.value.sqlstate == "UT004", info.value
        assert field in str(info.value)
    assert read_whole_log(root_store) == before  # and every reader still loads the log


def test_a_60_mb_event_and_10001_events_are_refused(attacker: str, root_store: EventStore) -> None:
    stream = f"poison-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, [{"type": "Big", "data": {"blob": "x" * 60_000_000}}])
        assert info.value.sqlstate == "UT004" and "events[0].data" in str(info.value)
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, [{"type": "Many", "data": {}}] * 10_001)
        assert info.value.sqlstate == "UT004" and "10001 events" in str(info.value)
        # the limits themselves are accepted
        raw_append(conn, stream, [{"type": "Many", "data": {}}] * 10_000)
    read_whole_log(root_store)
    assert root_store.stream_version(stream) == 10_000


def test_the_store_maps_a_database_refusal_to_a_validation_error(hostile_dsn: str) -> None:
    """The client checks first; what only the database catches (here: the
    stored text is larger than the compact one) still reaches the caller
    as a ValidationError naming the field."""
    with login_role(hostile_dsn, "utcp_writer") as dsn, EventStore.open(dsn, SETTINGS) as store:
        # 1 MiB compact; jsonb's text adds a space after each ':' and ','
        data = {f"k{i:06d}": 1 for i in range(limits.MAX_EVENT_BYTES // 12)}
        with pytest.raises(ValidationError) as info:
            store.append(f"big-{uuid.uuid4().hex[:8]}", [NewEvent("Big", data)])
        assert info.value.field == "events[0].data" and info.value.sqlstate == "UT004"


def test_the_databases_limits_are_the_clients(root_store: EventStore) -> None:
    with pooled_connection(root_store) as conn:
        row = conn.execute("SELECT * FROM utcp.log_limits()").fetchone()
    assert row is not None
    (ids, type_length, event, batch, batch_bytes, depth, exponent, earliest, latest) = row[:9]
    types, times, blank, control = row[9:]
    assert control == limits.CONTROL_PATTERN
    assert ids == limits.MAX_ID_LENGTH
    assert type_length == limits.MAX_TYPE_LENGTH
    assert event == limits.MAX_EVENT_BYTES == Settings().max_event_bytes
    assert batch == limits.MAX_BATCH_EVENTS == Settings().max_batch_events
    assert batch_bytes == limits.MAX_BATCH_BYTES
    assert depth == limits.MAX_DEPTH
    assert exponent == limits.MAX_NUMBER_EXPONENT
    assert (earliest, latest) == (limits.EARLIEST, limits.LATEST)
    assert (types, times, blank) == tuple(
        f"^{p}$" for p in (limits.TYPE_PATTERN, limits.TIME_PATTERN, limits.BLANK_PATTERN)
    )
    # and the patterns mean the same to PostgreSQL and to Python
    samples = [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.123456+15:59",
        "2024-01-01T00:00:00.1234567+15:59",
        "2024-01-01T00:00:00+16:00",
        "2024-01-01T24:00:00Z",
        "0000-01-01T00:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01 00:00:00Z",
        "infinity",
        "A",
        "a.b:c-d_e",
        "1a",
        "",
        " \u3000\u00a0",
        " x",
    ]
    with pooled_connection(root_store) as conn:
        for pattern in (types, times, blank):
            for sample in samples:
                row = conn.execute("SELECT %s::text ~ %s", (sample, pattern)).fetchone()
                assert row is not None
                assert row[0] == bool(re.fullmatch(pattern[1:-1], sample)), (pattern, sample)
        # what no identifier may contain: every character of the class, its
        # neighbours outside it, and plain text
        codes = [0x01, 0x1F, 0x20, 0x7E, 0x7F, 0x9F, 0xA0, 0xAD, 0x61C, 0x180E, 0x200A, 0x200B]
        codes += [0x200F, 0x2010, 0x202A, 0x202E, 0x202F, 0x2060, 0x2064, 0x2065, 0x2066]
        codes += [0x2069, 0x206A, 0xFEFF, 0xFEFE, ord("é")]
        for code in codes:
            sample = f"portfolio-{chr(code)}42"
            row = conn.execute("SELECT %s::text ~ %s", (sample, control)).fetchone()
            assert row is not None
            assert row[0] == bool(re.search(control, sample)), hex(code)


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_event_bytes", limits.MAX_EVENT_BYTES + 1), ("max_batch_events", 10_001)],
)
def test_settings_refuse_more_than_the_database_accepts(name: str, value: int) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{name: value})
    assert info.value.field == name


# -- derived columns ----------------------------------------------------------


def test_symbol_and_time_are_derived_from_the_payload(
    attacker: str, root_store: EventStore
) -> None:
    """A real AAPL trade sent with symbol null and a 1999 time: the database
    indexes it under AAPL at its execution time."""
    data = trade_data(when="2026-03-02T15:30:00+01:00")
    stream = f"portfolio-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Pacific/Kiritimati'")  # the session's zone plays no part
        raw_append(
            conn,
            stream,
            [
                {
                    "type": "TradeExecuted",
                    "data": data,
                    "symbol": None,
                    "occurred_at": "1999-01-01T00:00:00Z",
                }
            ],
        )
    [stored] = root_store.read_stream(stream)
    executed = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
    assert (stored.symbol, stored.occurred_at) == ("AAPL", executed)
    found = root_store.find_events(symbol="AAPL", type="TradeExecuted", limit=10_000).items
    assert stored.event_id in {e.event_id for e in found}
    trades = StorageAdapter(root_store).list_trades(symbol="AAPL", limit=10_000).items
    assert data["trade_id"] in {t.trade_id for t in trades}


def test_the_time_fields_agree_with_the_registry(root_store: EventStore) -> None:
    with pooled_connection(root_store) as conn:
        rows = dict(conn.execute("SELECT type, time_field FROM utcp.event_time_fields").fetchall())
    registry = {
        name: schema.time_field or "occurred_at"
        for name in REGISTRY.names()
        if (schema := REGISTRY.get(name)) is not None
    }
    assert rows == registry


# -- idempotency keys: computed and compared by the database ------------------


def test_a_squatted_key_is_a_conflict_not_a_duplicate(hostile_dsn: str, attacker: str) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        raw_append(conn, f"junk-{uuid.uuid4().hex[:8]}", [{"type": "Junk", "data": {}}], key=key)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT key, fingerprint FROM utcp.idempotency_keys").fetchall()
    victim_stream = f"portfolio-{uuid.uuid4().hex[:8]}"
    with login_role(hostile_dsn, "utcp_writer") as dsn, EventStore.open(dsn, SETTINGS) as victim:
        with pytest.raises(IdempotencyConflict) as info:
            victim.append(victim_stream, [NewEvent("Junk", {})], idempotency_key=key)
        assert info.value.idempotency_key == key and info.value.sqlstate == "UT005"
        assert victim.stream_version(victim_stream) == 0
        # the same request under a fresh key is written, and its retry is a duplicate
        fresh = f"order-{uuid.uuid4().hex[:8]}"
        events = [NewEvent("Order", {"b": 2, "a": {"y": 1, "x": 2}}, {"m": 1})]
        first = victim.append(victim_stream, events, idempotency_key=fresh)
        reordered = [NewEvent("Order", {"a": {"x": 2, "y": 1}, "b": 2}, {"m": 1})]
        again = victim.append(victim_stream, reordered, idempotency_key=fresh)
        assert again.duplicate and again.positions == first.positions
        for different in (
            [NewEvent("Order", {"b": 3, "a": {"y": 1, "x": 2}}, {"m": 1})],
            [NewEvent("Order", {"b": 2, "a": {"y": 1, "x": 2}})],
            [NewEvent("Other", {"b": 2, "a": {"y": 1, "x": 2}}, {"m": 1})],
            [*events, *events],
            [NewEvent("Order", events[0].data, events[0].metadata, event_id=uuid.uuid4())],
        ):
            with pytest.raises(IdempotencyConflict):
                victim.append(victim_stream, different, idempotency_key=fresh)
        with pytest.raises(IdempotencyConflict):  # another stream, the same events
            victim.append(f"{victim_stream}-2", events, idempotency_key=fresh)


def test_operators_can_still_read_the_keys(hostile_dsn: str) -> None:
    with (
        login_role(hostile_dsn, "utcp_operator") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute("SELECT count(*) FROM utcp.idempotency_keys").fetchone()
    for group in ("utcp_reader", "utcp_projector"):
        with (
            login_role(hostile_dsn, group) as dsn,
            psycopg.connect(dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("SELECT count(*) FROM utcp.idempotency_keys")


# -- who wrote it; operator decisions ------------------------------------------


def test_recorded_by_is_the_session_role_and_cannot_be_forged(
    attacker: str, root_store: EventStore
) -> None:
    stream = f"who-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, [{"type": "T", "data": {}, "recorded_by": "head-of-ops"}])
        assert info.value.sqlstate == "UT004" and "recorded_by" in str(info.value)
        raw_append(conn, stream, [{"type": "T", "data": {}}])
    with pooled_connection(root_store) as conn:
        row = conn.execute(
            "SELECT recorded_by, hash_version FROM utcp.stored_events WHERE stream_id = %s",
            (stream,),
        ).fetchone()
    assert row == (role_of(attacker), 2)


def test_only_operators_append_to_projection_streams(
    hostile_dsn: str, attacker: str, root_store: EventStore
) -> None:
    skipped = ProjectionEventSkipped(
        projection="trading",
        event_id=uuid.uuid4(),
        reason="forged",
        actor="head of operations",
        occurred_at=dt.datetime.now(dt.UTC),
    )
    stream = "projection-trading"
    before = root_store.stream_version(stream)
    with psycopg.connect(attacker, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            raw_append(
                conn,
                stream,
                [{"type": "ProjectionEventSkipped", "data": msgspec.to_builtins(skipped)}],
            )
        assert "operators" in str(info.value)
    with EventStore.open(attacker, SETTINGS) as writer, pytest.raises(StorageError) as refused:
        writer.append(stream, [NewEvent("ProjectionEventSkipped", skipped)])
    assert refused.value.sqlstate == "42501"
    assert root_store.stream_version(stream) == before
    with (
        login_role(hostile_dsn, "utcp_operator") as dsn,
        EventStore.open(dsn, SETTINGS) as operator,
    ):
        operator.append(stream, [NewEvent("ProjectionEventSkipped", skipped)])
    assert root_store.stream_version(stream) == before + 1


# -- hash scheme 2 ------------------------------------------------------------

SHIFTED = [
    # type, data, metadata, symbol: scheme 1 joins them with U+001F unescaped
    ("T", '{"a": 1}', '{"b": 2}', '{"c": 3}\x1fZ'),
    ('T\x1f{"a": 1}', '{"b": 2}', '{"c": 3}', "Z"),
]


def test_shifted_fields_hash_differently_under_scheme_2(root_store: EventStore) -> None:
    query = (
        "SELECT utcp.event_content(%(id)s, 's-1', 1, %(type)s, %(data)s, %(meta)s, %(symbol)s,"
        " 'epoch', 'epoch'), utcp.event_hash_v2(NULL, %(id)s, 's-1', 1, %(type)s, %(data)s,"
        " %(meta)s, %(symbol)s, 'epoch', 'epoch', 'writer')"
    )
    event_id = uuid.uuid4()
    with pooled_connection(root_store) as conn:
        rows = [
            conn.execute(
                query, {"id": event_id, "type": t, "data": d, "meta": m, "symbol": s}
            ).fetchone()
            for t, d, m, s in SHIFTED
        ]
    assert rows[0] is not None and rows[1] is not None
    assert rows[0][0] == rows[1][0]  # scheme 1: the same content
    assert rows[0][1] != rows[1][1]  # scheme 2: different hashes


@pytest.mark.parametrize("rehash", ["keep the hash", "scheme 1 hash", "scheme 1 hash, last event"])
def test_a_superuser_rewriting_a_v2_event_is_caught(
    hostile_dsn: str, root_store: EventStore, rehash: str
) -> None:
    stream = f"rewrite-{uuid.uuid4().hex[:8]}"
    root_store.append(stream, [NewEvent("T", {"a": 1, "symbol": "S"}, {"b": 2})])
    root_store.append(stream, [NewEvent("T", {"a": 2, "symbol": "S"}, {"b": 2})])
    version = 2 if rehash.endswith("last event") else 1
    assignments = "type = 'U', data = '{\"a\": 9}', metadata = '{\"z\": 1}', symbol = 'X'"
    if rehash != "keep the hash":
        assignments += (
            ", hash_version = 1, hash = sha256(coalesce(prev_hash, '\\x'::bytea) ||"
            " utcp.event_content(event_id, stream_id, stream_version, 'U', '{\"a\": 9}',"
            " '{\"z\": 1}', 'X', occurred_at, created_at))"
        )
    with psycopg.connect(hostile_dsn, autocommit=True) as admin, admin.transaction():
        admin.execute(
            "ALTER TABLE utcp.stored_events DISABLE TRIGGER stored_events_no_update_delete"
        )
        admin.execute(
            f"UPDATE utcp.stored_events SET {assignments}"
            " WHERE stream_id = %s AND stream_version = %s",
            (stream, version),
        )
        admin.execute(
            "ALTER TABLE utcp.stored_events ENABLE ALWAYS TRIGGER stored_events_no_update_delete"
        )
    report = root_store.verify_chain(stream)
    assert not report.ok
    # the rewritten event's own hash, else the link to it, else the scheme
    # going backwards (the last event: nothing links to it)
    assert [p.stream_version for p in report.problems] == [1 if rehash == "keep the hash" else 2]


def test_verify_checks_each_event_under_its_own_scheme(root_store: EventStore) -> None:
    """A stream whose first event is hashed under scheme 1 (written before
    this change) continues under scheme 2, and verifies."""
    stream = f"mixed-{uuid.uuid4().hex[:8]}"
    with pooled_connection(root_store) as conn:
        conn.execute(
            "INSERT INTO utcp.stored_events (event_id, stream_id, stream_version, type, data,"
            " occurred_at, created_at, hash, hash_version)"
            " SELECT id, %(s)s, 1, 'Old', '{}', t, t, sha256(utcp.event_content(id, %(s)s, 1,"
            " 'Old', '{}', NULL, NULL, t, t)), 1"
            " FROM (SELECT gen_random_uuid() AS id, now() - interval '1 day' AS t) x",
            {"s": stream},
        )
    root_store.append(stream, [NewEvent("New", {"n": 1})])
    events = root_store.read_stream(stream)
    assert [e.stream_version for e in events] == [1, 2] and events[1].prev_hash == events[0].hash
    assert root_store.verify_chain(stream).ok


# -- backdated events ---------------------------------------------------------


def test_created_at_is_the_insert_time_not_the_transaction_start(
    attacker: str, root_store: EventStore
) -> None:
    """A writer opens a transaction; another session appends to the same
    stream and commits; then the first appends: its event is not older."""
    stream = f"clock-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker) as slow:
        started = slow.execute("SELECT now()").fetchone()
        assert started is not None
        with psycopg.connect(attacker, autocommit=True) as fast:
            raw_append(fast, stream, [{"type": "Fast", "data": {}}])
        raw_append(slow, stream, [{"type": "Slow", "data": {}}])
        slow.commit()
    first, second = root_store.read_stream(stream)
    assert first.created_at > started[0]
    assert second.created_at >= first.created_at, "an event was recorded before its predecessor"


def test_what_the_client_accepts_at_the_limits_the_database_accepts(
    root_store: EventStore,
) -> None:
    def deep(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    stream = f"limits-{uuid.uuid4().hex[:8]}"
    root_store.append(
        stream,
        [
            NewEvent(
                "A" + "b" * (limits.MAX_TYPE_LENGTH - 1),
                {
                    "n": [10**300 - 1, -(10**300 - 1), 1e-300, 0, 0.0, 1e299],
                    "d": deep(limits.MAX_DEPTH - 1),
                    "symbol": "s" * limits.MAX_ID_LENGTH,
                    "occurred_at": "2024-02-29T23:59:59.123456-15:59",
                },
                {"d": deep(limits.MAX_DEPTH - 1)},
            )
        ],
    )
    [event] = root_store.read_stream(stream)
    assert event.occurred_at == dt.datetime(2024, 3, 1, 15, 58, 59, 123456, tzinfo=dt.UTC)
    assert event.data["n"][0] == 10**300 - 1


@pytest.mark.parametrize(
    "fields",
    [
        ("s-1", 1, "T", '{"a": 1}', None, None, "r"),
        ("s-1", 1, "T", '{"a": 1}', '{"b": "é\\u001f"}', "", ""),
        ("ストリーム-1", 2**62, "T.x:y-z", '{"ü": [1, 2.5, null]}', "{}", "BRK.B", None),
    ],
)
def test_event_content_v2_is_hash_v2s_encoding(
    root_store: EventStore, fields: tuple[Any, ...]
) -> None:
    """utcp.event_content_v2 (rewritten in append_guarded for speed) gives
    the bytes hash_v2 defined: a version tag, then each field through
    utcp.hash_field (-1 for NULL)."""
    stream, version, type_, data, meta, symbol, who = fields
    params = {
        "id": uuid.uuid4(),
        "stream": stream,
        "version": version,
        "type": type_,
        "data": data,
        "meta": meta,
        "symbol": symbol,
        "who": who,
        "at": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    }
    field = "coalesce(utcp.hash_field({}), '\\xffffffff'::bytea)"
    parts = [
        "%(id)s::uuid::text",
        "%(stream)s::text",
        "%(version)s::bigint::text",
        "%(type)s::text",
        "%(data)s::jsonb::text",
        "%(meta)s::jsonb::text",
        "%(symbol)s::text",
        "((extract(epoch FROM %(at)s::timestamptz) * 1000000)::bigint)::text",
        "((extract(epoch FROM %(at)s::timestamptz) * 1000000)::bigint)::text",
        "%(who)s::text",
    ]
    expected = " || ".join(
        ["convert_to('utcp-event-v2', 'UTF8')"] + [field.format(p) for p in parts]
    )
    query = (
        "SELECT utcp.event_content_v2(%(id)s, %(stream)s, %(version)s, %(type)s, %(data)s,"
        " %(meta)s, %(symbol)s, %(at)s, %(at)s, %(who)s), " + expected + ","
        " utcp.event_hash_v2(NULL, %(id)s, %(stream)s, %(version)s, %(type)s, %(data)s,"
        " %(meta)s, %(symbol)s, %(at)s, %(at)s, %(who)s),"
        " sha256(" + expected + ")"
    )
    with pooled_connection(root_store) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    assert row[0] == row[1] and row[2] == row[3]


# -- the function's shortcuts are exact (sqitch/deploy/append_guarded.sql) -----


def nested(levels: int) -> msgspec.Raw:
    """An object whose nesting reaches ``levels`` containers (the root
    included), as short as JSON allows: {"":[[...]]}."""
    return msgspec.Raw(b'{"":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}")


SHORTCUT_EDGES = [
    # depth: the walk is skipped below 2 * (MAX_DEPTH + 1) characters of text
    ("depth at the limit", nested(limits.MAX_DEPTH), None),
    ("depth one more", nested(limits.MAX_DEPTH + 1), "nested more than"),
    # numbers: the walk is skipped below MAX_NUMBER_EXPONENT + 1 characters
    ("largest number", {"": 10**limits.MAX_NUMBER_EXPONENT - 1}, None),
    ("1e300", {"": Decimal(10) ** limits.MAX_NUMBER_EXPONENT}, "out of range"),
    ("-1e300", {"": -(Decimal(10) ** limits.MAX_NUMBER_EXPONENT)}, "out of range"),
    ("1e-300", {"": Decimal(10) ** -limits.MAX_NUMBER_EXPONENT}, None),
    ("1e-301", {"": Decimal(10) ** -(limits.MAX_NUMBER_EXPONENT + 1)}, "out of range"),
    ("-1e-301", {"": -(Decimal(10) ** -(limits.MAX_NUMBER_EXPONENT + 1))}, "out of range"),
]


@pytest.mark.parametrize("where", ["data", "metadata"])
@pytest.mark.parametrize(
    ("value", "refusal"), [pytest.param(v, r, id=name) for name, v, r in SHORTCUT_EDGES]
)
def test_the_length_shortcuts_refuse_the_shortest_violations(
    attacker: str, value: Any, refusal: str | None, where: str
) -> None:
    """The depth and number walks run only on texts long enough to hold a
    violation: the shortest violating documents are still refused, the
    largest legal ones accepted, in data and in metadata alike."""
    event = {"type": "Edge", "data": {}, where: value}
    with psycopg.connect(attacker, autocommit=True) as conn:
        stream = f"edge-{uuid.uuid4().hex[:8]}"
        if refusal is None:
            raw_append(conn, stream, [event])
            return
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, [event])
        assert info.value.sqlstate == "UT004", info.value
        assert f"events[0].{where}" in str(info.value) and refusal in str(info.value)


def test_the_length_thresholds_are_the_shortest_violating_texts(root_store: EventStore) -> None:
    """The thresholds are tight: the shortest text that holds a violation
    has exactly as many characters as the shortcut lets through, so no
    violation is ever shorter (the proofs are in append_guarded.sql)."""
    depth_path = (
        f'strict $.**{{{limits.MAX_DEPTH}}} ? (@.type() == "object" || @.type() == "array")'
    )
    e = limits.MAX_NUMBER_EXPONENT
    number_path = (
        'strict $.** ? (@.type() == "number"'
        f" && (@ >= 1e{e} || @ <= -1e{e} || (@ != 0 && @ > -1e-{e} && @ < 1e-{e})))"
    )
    deepest = "[" * (limits.MAX_DEPTH + 1) + "]" * (limits.MAX_DEPTH + 1)
    with pooled_connection(root_store) as conn:
        row = conn.execute(
            "SELECT octet_length(%(deep)s::jsonb::text), jsonb_path_exists(%(deep)s::jsonb,"
            " %(dpath)s::jsonpath), jsonb_path_exists(%(shallow)s::jsonb, %(dpath)s::jsonpath),"
            " octet_length(%(big)s::jsonb::text), jsonb_path_exists(%(big)s::jsonb,"
            " %(npath)s::jsonpath), octet_length(%(tiny)s::jsonb::text),"
            " jsonb_path_exists(%(tiny)s::jsonb, %(npath)s::jsonpath)",
            {
                "deep": deepest,
                "shallow": deepest[1:-1],
                "dpath": depth_path,
                "big": f"1e{limits.MAX_NUMBER_EXPONENT}",
                "tiny": f"1e-{limits.MAX_NUMBER_EXPONENT + 1}",
                "npath": number_path,
            },
        ).fetchone()
    assert row == (
        2 * (limits.MAX_DEPTH + 1),  # 65 brackets deep: 130 characters, refused
        True,
        False,
        limits.MAX_NUMBER_EXPONENT + 1,  # 1e300: 301 digits, refused
        True,
        limits.MAX_NUMBER_EXPONENT + 3,  # 1e-301: '0.' and 301 digits
        True,
    )


@pytest.mark.parametrize(
    ("event_id", "accepted"),
    [
        ("0190C2A8-0000-7000-8000-00000000DEAD", True),
        ("0190c2a8-0000-7000-8000-00000000-ead", False),  # a fifth hyphen
        ("0190c2a8-0000-7000-8000-00000000deag", False),
        ("0190c2a8-0000-7000-8000-00000000de d", False),
        ("0190c2a800007000800000000000dead", False),
        ("{0190c2a8-0000-7000-8000-00000000dea}", False),
        ("0190c2a8-0000-7000-8000-00000000dea", False),
        ("0190c2a8-00000-700-8000-00000000dead", False),
    ],
)
def test_event_ids_are_the_canonical_uuid_form(
    attacker: str, event_id: str, accepted: bool
) -> None:
    """The id check without its counted groups refuses what it refused."""
    event = {"type": "Id", "data": {}, "id": event_id.replace("DEAD", uuid.uuid4().hex[:4])}
    with psycopg.connect(attacker, autocommit=True) as conn:
        stream = f"id-{uuid.uuid4().hex[:8]}"
        if accepted:
            raw_append(conn, stream, [event])
            return
        with pytest.raises(psycopg.Error) as info:
            raw_append(conn, stream, [event])
        assert info.value.sqlstate == "UT004" and "event_id" in str(info.value)


def test_a_repeated_id_is_refused_whatever_its_case(attacker: str) -> None:
    with psycopg.connect(attacker, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            raw_append(
                conn,
                f"dup-{uuid.uuid4().hex[:8]}",
                [
                    {"type": "Dup", "data": {}, "id": "0190c2a8-0000-7000-8000-00000000beef"},
                    {"type": "Dup", "data": {}, "id": "0190C2A8-0000-7000-8000-00000000BEEF"},
                ],
            )
        assert info.value.sqlstate == "UT004" and "appears twice" in str(info.value)


def test_a_large_mixed_batch_keeps_its_order(attacker: str, root_store: EventStore) -> None:
    """The function aggregates a batch without ORDER BY: each event keeps
    its place, its own id, symbol and business time (types with and without
    a time field of their own, interleaved)."""
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    events = []
    for i in range(1500):
        when = (base + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        if i % 3 == 0:
            events.append({"type": "TradeExecuted", "data": trade_data(f"S{i}", when)})
        else:
            data = {"i": i, "occurred_at": when, "symbol": f"S{i}"}
            events.append({"type": f"Mixed{i % 7}", "data": data})
        events[-1]["id"] = str(uuid.uuid4())
    stream = f"order-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(attacker, autocommit=True) as conn:
        raw_append(conn, stream, events)
    with pooled_connection(root_store) as conn:
        rows = conn.execute(
            "SELECT stream_version, event_id::text, symbol, occurred_at, type"
            " FROM utcp.stored_events WHERE stream_id = %s ORDER BY stream_version",
            (stream,),
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, 1501))
    assert [r[1] for r in rows] == [e["id"] for e in events]
    assert [r[2] for r in rows] == [f"S{i}" for i in range(1500)]
    assert [r[3] for r in rows] == [base + dt.timedelta(seconds=i) for i in range(1500)]
    assert [r[4] for r in rows] == [e["type"] for e in events]
    assert root_store.verify_chain(stream).ok
