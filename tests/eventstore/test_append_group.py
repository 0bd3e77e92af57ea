"""utcp.append_group (sqitch/deploy/append_group.sql), called directly with
psycopg: N append requests in one call, one outcome per request.

Every request of a group must end exactly as it would alone, after the
requests before it; nothing one request does may fail or change another.
The module deploys a database of its own (attacks plant functions and
overloads in it).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from eventstore import EventStore, Settings, sql
from eventstore.integrity import verify_log
from tests.support.database import deployed_database, login_role

SETTINGS = Settings(pool_min_size=1, pool_max_size=2, retry_attempts=1)
SIGNATURE = "utcp.append_group(text[], bigint[], text[], uuid[], jsonb)"
_dumps = msgspec.json.Encoder(decimal_format="number").encode


@pytest.fixture(scope="module")
def group_dsn() -> Iterator[str]:
    with deployed_database("utcp_group") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def writer(group_dsn: str) -> Iterator[str]:
    with login_role(group_dsn, "utcp_writer") as dsn:
        yield dsn


@pytest.fixture
def attacker(group_dsn: str) -> Iterator[str]:
    """A writer with a schema of its own (named like the role)."""
    with login_role(group_dsn, "utcp_writer", own_schema=True) as dsn:
        yield dsn


@dataclass
class Req:
    """One append request of a group."""

    stream: str
    events: list[dict[str, Any]]
    expected: int | None = None
    key: str | None = None
    request_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class Outcome:
    request: int
    outcome: str
    stream_id: str | None
    first_version: int | None
    last_version: int | None
    positions: list[int] | None
    request_id: uuid.UUID | None
    actual_version: int | None
    event_id: uuid.UUID | None
    message: str | None


def ev(n: int = 1, *, type_: str = "Thing", eid: str | None = None, **extra: Any) -> dict[str, Any]:
    """An event as the wire carries it: {id, type, data, metadata}."""
    return {
        "id": eid or str(uuid.uuid4()),
        "type": type_,
        "data": {"n": n, **extra},
        "metadata": {"by": "test"},
    }


def new_stream(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def group(conn: psycopg.Connection[Any], reqs: Sequence[Req]) -> list[Outcome]:
    rows = conn.execute(
        sql.APPEND_GROUP,
        (
            [r.stream for r in reqs],
            [r.expected for r in reqs],
            [r.key for r in reqs],
            [r.request_id for r in reqs],
            Jsonb([r.events for r in reqs], dumps=_dumps),
        ),
    ).fetchall()
    return [Outcome(*row) for row in rows]


def single(conn: psycopg.Connection[Any], req: Req) -> tuple[Any, ...]:
    """The same request through utcp.append_events (raises as it does)."""
    row = conn.execute(
        sql.APPEND,
        (req.stream, req.expected, req.key, req.request_id, Jsonb(req.events, dumps=_dumps)),
    ).fetchone()
    assert row is not None
    return tuple(row)


def stored(conn: psycopg.Connection[Any], stream: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT stream_version, event_id, type, data, metadata, symbol, occurred_at,"
        " created_at, prev_hash, hash, hash_version, recorded_by, position"
        " FROM utcp.stored_events WHERE stream_id = %s ORDER BY stream_version",
        (stream,),
    ).fetchall()


def chain_ok(conn: psycopg.Connection[Any], stream: str) -> bool:
    """Every hash is utcp.event_hash_v2 of its row and links to the previous
    one; versions count from 1; created_at never goes back."""
    row = conn.execute(
        "SELECT bool_and(ok) FROM (SELECT hash = utcp.event_hash_v2(prev_hash, event_id,"
        " stream_id, stream_version, type, data, metadata, symbol, occurred_at, created_at,"
        " recorded_by) AND prev_hash IS NOT DISTINCT FROM lag(hash) OVER w"
        " AND stream_version = row_number() OVER w"
        " AND created_at >= coalesce(lag(created_at) OVER w, '-infinity') AS ok"
        " FROM utcp.stored_events WHERE stream_id = %s"
        " WINDOW w AS (ORDER BY stream_version)) z",
        (stream,),
    ).fetchone()
    return bool(row and row[0])


# -- outcomes ------------------------------------------------------------------


def test_every_outcome_kind(writer: str, group_dsn: str) -> None:
    a, b = new_stream(), new_stream()
    taken = str(uuid.uuid4())
    key = f"key-{uuid.uuid4().hex}"
    with psycopg.connect(writer, autocommit=True) as conn:
        first = group(conn, [Req(a, [ev(1, eid=taken)], key=key)])
        assert [(o.outcome, o.first_version, o.last_version) for o in first] == [("w", 1, 1)]
        reqs = [
            Req(b, [ev(1)], expected=0),  # w
            Req(a, [ev(1, eid=taken)], key=key),  # k: the same request again
            Req(a, [ev(2)], expected=5),  # v: a is at 1
            Req(b, [ev(9)], key=key),  # c: the key answered for a
            Req(b, [ev(1, type_="1 bad")]),  # i
            Req(b, [ev(3, eid=taken)]),  # d: the id is in the log
            Req("projection-trading", [ev(1)]),  # a: a writer is no operator
            Req(b, [ev(2)], expected=1),  # w: after request 1
        ]
        out = group(conn, reqs)
    assert [o.request for o in out] == list(range(1, 9))
    assert [o.outcome for o in out] == ["w", "k", "v", "c", "i", "d", "a", "w"]
    w, k, v, c, i, d, a_, w2 = out
    assert (w.stream_id, w.first_version, w.last_version, w.request_id) == (
        b,
        1,
        1,
        reqs[0].request_id,
    )
    assert w.positions is not None and len(w.positions) == 1
    # 'k' is the key's earlier result: its stream, versions, positions, request id
    assert (k.stream_id, k.first_version, k.last_version, k.positions, k.request_id) == (
        a,
        1,
        1,
        first[0].positions,
        first[0].request_id,
    )
    assert (v.actual_version, v.stream_id) == (1, a) and v.message == f"stream {a} is at version 1"
    assert c.message is not None and c.message.startswith(f"idempotency key {key} was already used")
    assert i.message is not None and i.message.startswith("events[0].type: malformed event type")
    assert d.event_id == uuid.UUID(taken) and d.message is not None and taken in d.message
    assert a_.message == (
        "only operators (members of utcp_operator) may append to projection-trading"
    )
    assert (w2.first_version, w2.last_version) == (2, 2)
    for o in (v, c, i, d, a_):
        assert o.positions is None and o.first_version is None
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        assert [r[0] for r in stored(admin, b)] == [1, 2]
        assert [r[3]["n"] for r in stored(admin, b)] == [1, 2]
        assert [r[0] for r in stored(admin, a)] == [1]
        assert admin.execute(
            "SELECT count(*) FROM utcp.stored_events WHERE stream_id = 'projection-trading'"
        ).fetchone() == (0,)
        assert chain_ok(admin, a) and chain_ok(admin, b)


def test_a_failing_request_leaves_its_neighbours_as_if_alone(writer: str, group_dsn: str) -> None:
    """Requests 1 and 3 of a group whose request 2 fails are stored as the
    same requests sent alone (to twin streams): versions, content, derived
    columns, hash scheme, a valid chain."""
    when = "2026-03-02T15:30:00Z"

    def batch1() -> list[dict[str, Any]]:
        return [ev(1, symbol="AAPL", occurred_at=when), ev(2)]

    def batch3() -> list[dict[str, Any]]:
        return [ev(3, symbol="MSFT")]

    def columns(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        # version, type, data, metadata, symbol, occurred_at (or "the insert's
        # time"), hash_version, recorded_by
        return [
            (r[0], r[2], r[3], r[4], r[5], "created_at" if r[6] == r[7] else r[6], r[10], r[11])
            for r in rows
        ]

    bad_requests = [
        Req("", [ev(1)]),  # refused as a request
        Req(new_stream(), [ev(1), {"id": "not-a-uuid", "type": "T", "data": {}}]),  # an event
        Req(new_stream(), [ev(1)], expected=7),  # wrong version
    ]
    with psycopg.connect(writer, autocommit=True) as conn:
        t1, t3 = new_stream(), new_stream()
        assert single(conn, Req(t1, batch1(), expected=0))[0] == "w"
        assert single(conn, Req(t3, batch3()))[0] == "w"
        pairs = []
        for bad in bad_requests:
            s1, s3 = new_stream(), new_stream()
            out = group(conn, [Req(s1, batch1(), expected=0), bad, Req(s3, batch3())])
            assert [o.outcome for o in out] == ["w", "v" if bad.expected else "i", "w"]
            assert [(o.first_version, o.last_version) for o in (out[0], out[2])] == [(1, 2), (1, 1)]
            pairs += [(s1, t1), (s3, t3)]
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        for grouped, alone in pairs:
            g = stored(admin, grouped)
            assert columns(g) == columns(stored(admin, alone))
            assert chain_ok(admin, grouped)
        g = stored(admin, pairs[0][0])
        assert g[0][6].isoformat() == "2026-03-02T15:30:00+00:00"  # occurred_at derived
        assert (g[0][5], g[1][5]) == ("AAPL", None)  # symbol derived


def test_two_requests_to_one_stream_behave_as_if_sent_one_after_the_other(
    writer: str, group_dsn: str
) -> None:
    s = new_stream()
    with psycopg.connect(writer, autocommit=True) as conn:
        out = group(
            conn,
            [
                Req(s, [ev(1), ev(2)], expected=0),
                Req(s, [ev(3)], expected=2),
                Req(s, [ev(4)], expected=2),  # stale: the stream is at 3 now
                Req(s, [ev(5)], expected=-1),
                Req(s, [ev(6)]),
            ],
        )
    assert [(o.outcome, o.first_version, o.last_version, o.actual_version) for o in out] == [
        ("w", 1, 2, None),
        ("w", 3, 3, None),
        ("v", None, None, 3),
        ("w", 4, 4, None),
        ("w", 5, 5, None),
    ]
    positions = [p for o in out if o.positions for p in o.positions]
    assert positions == sorted(positions) and len(set(positions)) == 5
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        rows = stored(admin, s)
        assert [(r[0], r[3]["n"]) for r in rows] == [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6)]
        assert [r[12] for r in rows] == positions
        assert chain_ok(admin, s)
    # -1: the stream must exist; a new stream's first request refuses it
    with psycopg.connect(writer, autocommit=True) as conn:
        fresh = new_stream()
        out = group(conn, [Req(fresh, [ev(1)], expected=-1), Req(fresh, [ev(1)], expected=0)])
        assert [(o.outcome, o.actual_version) for o in out] == [("v", 0), ("w", None)]


def test_the_same_key_twice_in_one_group(writer: str) -> None:
    s = new_stream()
    key = f"twice-{uuid.uuid4().hex}"
    with psycopg.connect(writer, autocommit=True) as conn:
        same = [ev(1)]
        out = group(
            conn,
            [
                Req(s, same, key=key),
                Req(s, [dict(same[0], id=str(uuid.uuid4()))], key=key),  # a retry: new id
                Req(s, [ev(2)], key=key),  # other content
                Req(new_stream(), same, key=key),  # another stream
            ],
        )
        assert [o.outcome for o in out] == ["w", "k", "c", "c"]
        assert (out[1].stream_id, out[1].first_version, out[1].positions, out[1].request_id) == (
            s,
            1,
            out[0].positions,
            out[0].request_id,
        )
        # a key whose first request failed is free for the next one
        key2 = f"free-{uuid.uuid4().hex}"
        out = group(conn, [Req(s, [ev(7)], key=key2, expected=0), Req(s, [ev(7)], key=key2)])
        assert [o.outcome for o in out] == ["v", "w"]
        # and a later call answers with the stored result
        again = group(conn, [Req(s, [ev(7)], key=key2)])
        assert again[0].outcome == "k" and again[0].positions == out[1].positions


def test_a_group_of_one_writes_what_append_events_writes(writer: str, group_dsn: str) -> None:
    """Fingerprints agree both ways (a key written by one function answers the
    same request sent to the other); the columns, hash scheme and
    recorded_by are the same; created_at never goes back in a stream."""
    s = new_stream()
    trade = {
        "trade_id": "t-1",
        "portfolio_id": "p-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "price": "101.5",
        "fees": "0",
        "executed_at": "2026-03-02T15:30:00Z",
    }
    events = [{"id": str(uuid.uuid4()), "type": "TradeExecuted", "data": trade, "metadata": None}]
    k1, k2 = f"fp1-{uuid.uuid4().hex}", f"fp2-{uuid.uuid4().hex}"
    with psycopg.connect(writer, autocommit=True) as conn:
        r1 = single(conn, Req(s, events, key=k1, expected=0))
        g1 = group(conn, [Req(s, [dict(events[0], id=str(uuid.uuid4()))], key=k1)])
        assert r1[0] == "w" and g1[0].outcome == "k"
        assert (g1[0].first_version, g1[0].positions, g1[0].request_id) == (1, r1[4], r1[5])
        g2 = group(conn, [Req(s, [dict(events[0], id=str(uuid.uuid4()))], key=k2, expected=1)])
        r2 = single(conn, Req(s, [dict(events[0], id=str(uuid.uuid4()))], key=k2))
        assert g2[0].outcome == "w" and r2[0] == "k"
        assert (r2[2], r2[4], r2[5]) == (2, g2[0].positions, g2[0].request_id)
        # caller-chosen ids are part of the fingerprint in both
        chosen = dict(events[0], id=str(uuid.uuid4()), id_given=True)
        k3 = f"fp3-{uuid.uuid4().hex}"
        assert group(conn, [Req(s, [chosen], key=k3)])[0].outcome == "w"
        with pytest.raises(psycopg.Error) as info:
            single(conn, Req(s, [dict(chosen, id=str(uuid.uuid4()))], key=k3))
        assert info.value.sqlstate == "UT005"
        assert single(conn, Req(s, [chosen], key=k3))[0] == "k"
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        rows = stored(admin, s)
        role = psycopg.conninfo.conninfo_to_dict(writer)["user"]
        assert [(r[0], r[5], r[10], r[11]) for r in rows] == [
            (1, "AAPL", 2, role),
            (2, "AAPL", 2, role),
            (3, "AAPL", 2, role),
        ]
        assert {r[6].isoformat() for r in rows} == {"2026-03-02T15:30:00+00:00"}
        assert chain_ok(admin, s)
        fps = admin.execute(
            "SELECT key, fingerprint FROM utcp.idempotency_keys WHERE key = ANY(%s) ORDER BY key",
            ([k1, k2],),
        ).fetchall()
        assert len(fps) == 2 and all(len(fp) == 32 for _, fp in fps)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([{"type": "Poison", "data": {"occurred_at": "infinity"}}], id="infinity"),
        pytest.param([{"type": "Poison", "data": {"n": 1e300 * 10}}], id="huge"),
        pytest.param([{"type": "Poison", "data": {"n": 0.1234567890123456789}}], id="ok-float"),
        pytest.param([{"type": "Poison", "data": {"symbol": 5}}], id="symbol"),
        pytest.param([{"type": "Poison", "data": {}, "metadata": [1]}], id="metadata"),
        pytest.param([{"type": "Poison", "data": {}, "extra": 1}], id="unknown-field"),
        pytest.param([], id="empty"),
        pytest.param(
            [{"type": "P", "data": {}, "id": "0190c2a8-0000-7000-8000-00000000dead"}] * 2,
            id="repeated-id",
        ),
        pytest.param(
            [{"type": "TradeExecuted", "data": {"executed_at": "2023-02-29T00:00:00Z"}}],
            id="no-such-day",
        ),
    ],
)
def test_refusals_carry_append_events_messages(writer: str, events: list[dict[str, Any]]) -> None:
    def wire() -> list[dict[str, Any]]:
        return [{"id": str(uuid.uuid4()), "metadata": None, **e} for e in events]

    with psycopg.connect(writer, autocommit=True) as conn:
        try:
            expected: str | None = None
            single(conn, Req(new_stream(), wire()))
        except psycopg.Error as exc:
            assert exc.sqlstate == "UT004"
            expected = exc.diag.message_primary
        reqs = [Req(new_stream(), [ev(1)]), Req(new_stream(), wire()), Req(new_stream(), [ev(2)])]
        out = group(conn, reqs)
    if expected is None:  # accepted by both
        assert [o.outcome for o in out] == ["w", "w", "w"]
    else:
        assert [o.outcome for o in out] == ["w", "i", "w"]
        assert out[1].message == expected


def test_request_level_refusals(writer: str) -> None:
    with psycopg.connect(writer, autocommit=True) as conn:
        out = group(
            conn,
            [
                Req("", [ev(1)]),
                Req(new_stream(), [ev(1)], key=" "),
                Req(new_stream(), [ev(1)], expected=-2),
                Req("x" * 201, [ev(1)]),
                Req(new_stream(), [ev(1)]),
            ],
        )
    assert [o.outcome for o in out] == ["i", "i", "i", "i", "w"]
    assert [o.message.split(":")[0] for o in out[:4] if o.message] == [
        "stream_id",
        "idempotency_key",
        "expected_version",
        "stream_id",
    ]


def test_a_duplicate_id_across_requests_of_a_group(writer: str) -> None:
    shared = str(uuid.uuid4())
    s = new_stream()
    with psycopg.connect(writer, autocommit=True) as conn:
        out = group(
            conn,
            [
                Req(s, [ev(1, eid=shared)], expected=3),  # fails: the id stays free
                Req(new_stream(), [ev(2, eid=shared)]),  # writes it
                Req(new_stream(), [ev(3), ev(4, eid=shared.upper())]),  # 'd', whatever the case
            ],
        )
        assert [o.outcome for o in out] == ["v", "w", "d"]
        assert out[2].event_id == uuid.UUID(shared)
        # in a group of one, an id already in the log raises as append_events does
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            group(conn, [Req(new_stream(), [ev(5, eid=shared)])])
        assert info.value.diag.constraint_name == "stored_events_event_id_key"


def test_a_malformed_group_is_refused_whole(writer: str) -> None:
    with psycopg.connect(writer, autocommit=True) as conn:
        for params in (
            (["a-1", "a-2"], [None], [None, None], [uuid.uuid4()] * 2, Jsonb([[ev()], [ev()]])),
            (["a-1"], [None], [None], [uuid.uuid4()], Jsonb([[ev()], [ev()]])),
            ([], [], [], [], Jsonb([])),
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql.APPEND_GROUP, params)
            assert info.value.sqlstate == "22023"
        # arrays with another lower bound would misalign the requests
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                "SELECT * FROM utcp.append_group('[0:0]={a-1}'::text[], '{NULL}'::bigint[],"
                " '{NULL}'::text[], ARRAY[gen_random_uuid()], '[[]]'::jsonb)"
            )
        assert info.value.sqlstate == "22023"


# -- concurrency -------------------------------------------------------------


def test_concurrent_groups_on_overlapping_streams(writer: str, group_dsn: str) -> None:
    """Four connections send groups at once to three shared streams, each
    request with the version it last saw: every stream ends gap-free, every
    'w' is stored once, every 'v' wrote nothing, and no call fails whole."""
    streams = [new_stream("hot") for _ in range(3)]
    written: list[tuple[str, int, int, int]] = []
    refused: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        try:
            with psycopg.connect(writer, autocommit=True) as conn:
                seen = dict.fromkeys(streams, 0)
                for round_ in range(15):
                    picks = [streams[(seed + round_ + j) % 3] for j in range(4)]
                    reqs = [
                        Req(p, [ev(seed * 1000 + round_ * 10 + j)], expected=seen[p])
                        for j, p in enumerate(picks)
                    ]
                    out = group(conn, reqs)
                    with lock:
                        for r, o in zip(reqs, out, strict=True):
                            if o.outcome == "w":
                                assert o.first_version is not None and o.positions
                                written.append((r.stream, o.first_version, o.positions[0], seed))
                                seen[r.stream] = o.first_version
                            else:
                                assert o.outcome == "v", o
                                assert o.actual_version is not None
                                refused.append(1)
                                seen[r.stream] = o.actual_version
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert written and refused  # contention happened, and writes went through
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        for s in streams:
            rows = stored(admin, s)
            assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # gap-free
            mine = sorted(v for st, v, _, _ in written if st == s)
            assert mine == [r[0] for r in rows]  # nothing lost or doubled
            assert {p for st, _, p, _ in written if st == s} == {r[12] for r in rows}
            assert chain_ok(admin, s)


def test_the_log_verifies_after_groups(group_dsn: str) -> None:
    with psycopg.connect(group_dsn, autocommit=True) as conn:
        report = verify_log(conn)
    assert report.ok, report.summary()


# -- privileges and hostile callers -----------------------------------------


@pytest.mark.parametrize("role", ["utcp_reader", "utcp_projector"])
def test_readers_and_projectors_may_not_call_it(group_dsn: str, role: str) -> None:
    with (
        login_role(group_dsn, role) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        group(conn, [Req(new_stream(), [ev(1)])])
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT has_function_privilege('utcp_writer', %(f)s, 'EXECUTE'),"
            " has_function_privilege('utcp_operator', %(f)s, 'EXECUTE'),"
            " has_function_privilege('public', %(f)s, 'EXECUTE')",
            {"f": SIGNATURE},
        ).fetchone()
    assert row == (True, True, False)


def test_an_operator_appends_to_projection_streams(group_dsn: str) -> None:
    stream = f"projection-{uuid.uuid4().hex[:8]}"
    with (
        login_role(group_dsn, "utcp_operator") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        assert group(conn, [Req(stream, [ev(1)])])[0].outcome == "w"


def test_planted_functions_do_not_run_as_the_owner(attacker: str, group_dsn: str) -> None:
    role = psycopg.conninfo.conninfo_to_dict(attacker)["user"]
    assert isinstance(role, str)
    s = new_stream("victim")
    with psycopg.connect(attacker, autocommit=True) as conn:
        schema = pgsql.Identifier(role)
        for signature, returns, value in (
            ("sha256(bytea)", "bytea", "'\\x00'::bytea"),
            ("convert_to(text, name)", "bytea", "'\\x00'::bytea"),
            ("jsonb_array_length(jsonb)", "int", "1"),
            ("cardinality(anyarray)", "int", "1"),
            ("hashtext(text)", "int", "1"),
            ("array_position(anycompatiblearray, anycompatible)", "int", "1"),
        ):
            conn.execute(
                pgsql.SQL(
                    "CREATE FUNCTION {}.{} RETURNS {} LANGUAGE plpgsql AS $$ BEGIN"
                    " EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);"
                    " RETURN {}; END $$"
                ).format(schema, pgsql.SQL(signature), pgsql.SQL(returns), pgsql.SQL(value))
            )
        conn.execute(pgsql.SQL("SET search_path = {}, pg_catalog").format(schema))
        out = group(conn, [Req(s, [ev(1)]), Req(s, [ev(2)], expected=1)])
        assert [o.outcome for o in out] == ["w", "w"]
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        sup = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        assert sup == (False,), "the writer made itself superuser"
        assert chain_ok(admin, s)


def test_an_overload_with_looser_types_is_not_called(group_dsn: str, writer: str) -> None:
    body = (
        'RETURNS TABLE (request int, outcome "char", stream_id text, first_version bigint,'
        " last_version bigint, positions bigint[], request_id uuid, actual_version bigint,"
        " event_id uuid, message text) LANGUAGE sql AS $$"
        " SELECT 1, 'w'::\"char\", 'REWRITTEN'::text, 1::bigint, 1::bigint, ARRAY[-1]::bigint[],"
        " gen_random_uuid(), NULL::bigint, NULL::uuid, NULL::text $$"
    )
    overloads = [
        "(text[], int2[], text[], uuid[], jsonb)",
        "(text[], bigint[], text[], text[], jsonb)",
        "(text[], bigint[], text[], uuid[], json)",
        "(varchar[], int4[], varchar[], uuid[], jsonb)",
    ]
    with psycopg.connect(group_dsn, autocommit=True) as admin:
        for args in overloads:
            admin.execute(f"CREATE FUNCTION utcp.append_group{args} {body}")
            admin.execute(f"GRANT EXECUTE ON FUNCTION utcp.append_group{args} TO utcp_writer")
    try:
        s = new_stream("overload")
        with psycopg.connect(writer, autocommit=True) as conn:
            out = group(conn, [Req(s, [ev(1)], expected=0)])
        assert out[0].stream_id == s and out[0].positions and -1 not in out[0].positions
    finally:
        with psycopg.connect(group_dsn, autocommit=True) as admin:
            for args in overloads:
                admin.execute(f"DROP FUNCTION utcp.append_group{args}")


def test_the_store_reads_what_a_group_wrote(group_dsn: str, writer: str) -> None:
    s = new_stream()
    with psycopg.connect(writer, autocommit=True) as conn:
        group(conn, [Req(s, [ev(1), ev(2)]), Req(s, [ev(3)], expected=2)])
    with EventStore.open(group_dsn, SETTINGS) as store:
        assert [e.data["n"] for e in store.read_stream(s)] == [1, 2, 3]
        assert store.verify_chain(s).ok
