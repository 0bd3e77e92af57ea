"""The storage adapter: save_trade / save_audit_event (idempotent by default)
and the two query functions, with EXPLAIN showing they use the log's indexes
on a table large enough for the planner to care."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from eventstore import EventStore, IdempotencyConflict, NewEvent, ValidationError
from eventstore import sql as store_sql
from tests.support.database import deployed_database
from tests.support.database import log_counts as counts
from trading import AuditEvent, StorageAdapter, Trade, trading_registry
from trading.events import TradeCancelled

REGISTRY = trading_registry()

T0 = dt.datetime(2024, 3, 4, 9, 30, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def unique_symbol() -> str:
    return f"Z{uuid.uuid4().hex[:8].upper()}"


def make_trade(symbol: str, portfolio: str, at: dt.datetime, **changes: Any) -> Trade:
    fields: dict[str, Any] = {
        "trade_id": f"t-{uuid.uuid4().hex}",
        "portfolio_id": portfolio,
        "symbol": symbol,
        "side": "buy",
        "quantity": Decimal("10"),
        "price": Decimal("101.25"),
        "fees": Decimal("0.50"),
        "executed_at": at,
    }
    fields.update(changes)
    return Trade(**fields)


def make_audit(symbol: str, type: str, at: dt.datetime, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "id": f"a-{uuid.uuid4().hex}",
        "type": type,
        "symbol": symbol,
        "actor": "strategy-7",
        "occurred_at": at,
        "details": {"score": "0.75", "reason": "crossover", "levels": [1, 2.5]},
    }
    fields.update(changes)
    return AuditEvent(**fields)


# -- saving ---------------------------------------------------------------------


def test_save_trade_appends_trade_executed_to_the_portfolio_stream(
    adapter: StorageAdapter, store: EventStore, admin: psycopg.Connection[Any]
) -> None:
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trade = make_trade(unique_symbol(), portfolio, T0, order_id="o-1")
    result = adapter.save_trade(trade)
    assert result.duplicate is False
    assert result.stream_id == f"portfolio-{portfolio}"
    (event,) = store.read_stream(f"portfolio-{portfolio}")
    assert event.type == "TradeExecuted"
    assert event.symbol == trade.symbol
    assert event.occurred_at == trade.executed_at
    assert event.position == result.positions[0]
    assert REGISTRY.decode(event) == trade
    row = admin.execute(
        "SELECT stream_id FROM utcp.idempotency_keys WHERE key = %s", (f"trade:{trade.trade_id}",)
    ).fetchone()
    assert row == (f"portfolio-{portfolio}",)


def test_saving_the_same_trade_again_is_a_duplicate(
    adapter: StorageAdapter, store: EventStore, admin: psycopg.Connection[Any]
) -> None:
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trade = make_trade(unique_symbol(), portfolio, T0)
    first = adapter.save_trade(trade)
    before = counts(admin)
    again = adapter.save_trade(msgspec.structs.replace(trade))  # an equal, separate object
    assert again == msgspec.structs.replace(first, duplicate=True)
    assert counts(admin) == before
    assert store.stream_version(f"portfolio-{portfolio}") == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": Decimal("11")},
        {"price": Decimal("101.26")},
        {"side": "sell"},
        {"fees": Decimal("0")},
        {"order_id": "o-2"},
        {"executed_at": T0 + dt.timedelta(seconds=1)},
        {"portfolio_id": "p-elsewhere"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_another_trade_with_the_same_trade_id_conflicts(
    adapter: StorageAdapter, admin: psycopg.Connection[Any], changes: dict[str, Any]
) -> None:
    trade = make_trade(unique_symbol(), f"p-{uuid.uuid4().hex[:8]}", T0)
    adapter.save_trade(trade)
    before = counts(admin)
    with pytest.raises(IdempotencyConflict) as info:
        adapter.save_trade(msgspec.structs.replace(trade, **changes))
    assert info.value.idempotency_key == f"trade:{trade.trade_id}"
    assert counts(admin) == before


def test_save_trade_with_an_explicit_key(adapter: StorageAdapter, store: EventStore) -> None:
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trade = make_trade(unique_symbol(), portfolio, T0)
    key = f"order-fill-{uuid.uuid4().hex}"
    first = adapter.save_trade(trade, idempotency_key=key)
    assert adapter.save_trade(trade, idempotency_key=key).duplicate is True
    # the default key is a different key: the same trade saved under it is written again
    # (the caller chose the key; the adapter does not second-guess it)
    assert adapter.save_trade(trade).positions != first.positions
    assert store.stream_version(f"portfolio-{portfolio}") == 2


def test_save_audit_event(
    adapter: StorageAdapter, store: EventStore, admin: psycopg.Connection[Any]
) -> None:
    symbol = unique_symbol()
    event = make_audit(symbol, "SignalRaised", T0, details={"score": Decimal("0.750"), "n": 3})
    result = adapter.save_audit_event(event)
    assert result.stream_id == f"audit-{symbol}"
    assert result.duplicate is False
    (stored,) = store.read_stream(f"audit-{symbol}")
    assert stored.type == "SignalRaised"
    assert stored.symbol == symbol
    assert stored.occurred_at == T0
    assert stored.data["details"] == {"score": "0.750", "n": 3}  # Decimal kept exactly
    before = counts(admin)
    assert adapter.save_audit_event(event) == msgspec.structs.replace(result, duplicate=True)
    assert counts(admin) == before
    with pytest.raises(IdempotencyConflict) as info:
        adapter.save_audit_event(msgspec.structs.replace(event, actor="someone-else"))
    assert info.value.idempotency_key == f"audit:{event.id}"
    assert counts(admin) == before
    other_key = adapter.save_audit_event(event, idempotency_key=f"k-{uuid.uuid4().hex}")
    assert other_key.duplicate is False
    assert other_key.first_version == 2


# -- list_trades ------------------------------------------------------------------


def test_list_trades_by_symbol_in_execution_order(adapter: StorageAdapter) -> None:
    symbol = unique_symbol()
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trades = [make_trade(symbol, portfolio, T0 + h * HOUR) for h in (3, 1, 2, 5, 4, 0)]
    for trade in trades:
        adapter.save_trade(trade)
    adapter.save_trade(make_trade(unique_symbol(), portfolio, T0))  # another symbol
    listed = adapter.list_trades(symbol=symbol).items
    assert listed == sorted(trades, key=lambda t: t.executed_at)
    assert all(isinstance(t, Trade) for t in listed)


def test_list_trades_by_portfolio(adapter: StorageAdapter) -> None:
    symbol = unique_symbol()
    mine, theirs = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    my_trades = [make_trade(symbol, mine, T0 + h * HOUR) for h in (2, 0, 1)]
    their_trades = [make_trade(symbol, theirs, T0 + h * HOUR) for h in (0, 1)]
    other_symbol = make_trade(unique_symbol(), mine, T0 + 10 * HOUR)
    for trade in [*my_trades, *their_trades, other_symbol]:
        adapter.save_trade(trade)
    expected_mine = [*sorted(my_trades, key=lambda t: t.executed_at), other_symbol]
    assert adapter.list_trades(portfolio_id=mine).items == expected_mine
    assert adapter.list_trades(portfolio_id=theirs).items == their_trades
    assert adapter.list_trades(symbol=symbol, portfolio_id=mine).items == expected_mine[:3]
    assert adapter.list_trades(portfolio_id=f"p-{uuid.uuid4().hex[:8]}").items == []


def test_list_trades_since_until_is_half_open(adapter: StorageAdapter) -> None:
    symbol = unique_symbol()
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trades = {h: make_trade(symbol, portfolio, T0 + h * HOUR) for h in range(6)}
    for trade in trades.values():
        adapter.save_trade(trade)
    at = lambda h: T0 + h * HOUR  # noqa: E731
    hours = lambda ts: [int((t.executed_at - T0) / HOUR) for t in ts]  # noqa: E731
    assert hours(adapter.list_trades(symbol=symbol, since=at(2)).items) == [2, 3, 4, 5]
    assert hours(adapter.list_trades(symbol=symbol, until=at(2)).items) == [0, 1]
    assert hours(adapter.list_trades(symbol=symbol, since=at(2), until=at(4)).items) == [2, 3]
    assert hours(adapter.list_trades(symbol=symbol, since=at(2), until=at(2)).items) == []
    assert hours(adapter.list_trades(portfolio_id=portfolio, since=at(5)).items) == [5]
    # another time zone, the same instants
    est = dt.timezone(dt.timedelta(hours=-5))
    since = at(1).astimezone(est)
    assert hours(adapter.list_trades(symbol=symbol, since=since, until=at(3)).items) == [1, 2]


def test_list_trades_limit(adapter: StorageAdapter) -> None:
    symbol = unique_symbol()
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    for h in (4, 2, 0, 3, 1):
        adapter.save_trade(make_trade(symbol, portfolio, T0 + h * HOUR))
    listed = adapter.list_trades(symbol=symbol, limit=3).items
    assert [t.executed_at for t in listed] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert len(adapter.list_trades(symbol=symbol, limit=1).items) == 1
    with pytest.raises(ValidationError) as info:
        adapter.list_trades(symbol=symbol, limit=0)
    assert info.value.field == "limit"


def test_list_trades_needs_aware_times(adapter: StorageAdapter) -> None:
    for name in ("since", "until"):
        with pytest.raises(ValidationError) as info:
            adapter.list_trades(**{name: dt.datetime(2024, 1, 1)})  # type: ignore[arg-type]
        assert info.value.field == name
        with pytest.raises(ValidationError) as info:
            adapter.list_audit_events(**{name: "2024-01-01T00:00:00Z"})  # type: ignore[arg-type]
        assert info.value.field == name


# -- list_audit_events ------------------------------------------------------------


def test_list_audit_events_by_symbol_type_and_time(adapter: StorageAdapter) -> None:
    symbol, other_symbol = unique_symbol(), unique_symbol()
    signal, decision = f"Signal{uuid.uuid4().hex[:8]}", f"Decision{uuid.uuid4().hex[:8]}"
    events = [
        make_audit(symbol, signal, T0 + 3 * HOUR),
        make_audit(symbol, decision, T0 + 1 * HOUR),
        make_audit(symbol, signal, T0),
        make_audit(other_symbol, signal, T0 + 2 * HOUR),
        make_audit(other_symbol, decision, T0 + 4 * HOUR),
    ]
    for event in events:
        adapter.save_audit_event(event)
    by_time = lambda es: sorted(es, key=lambda e: e.occurred_at)  # noqa: E731
    assert adapter.list_audit_events(symbol=symbol).items == by_time(events[:3])
    assert adapter.list_audit_events(type=signal).items == by_time(
        [events[0], events[2], events[3]]
    )
    assert adapter.list_audit_events(symbol=symbol, type=signal).items == [events[2], events[0]]
    assert adapter.list_audit_events(type=decision, since=T0 + HOUR, until=T0 + 4 * HOUR).items == [
        events[1]
    ]
    assert adapter.list_audit_events(type=signal, since=T0 + 2 * HOUR).items == [
        events[3],
        events[0],
    ]
    assert adapter.list_audit_events(type=signal, until=T0 + 2 * HOUR).items == [events[2]]
    assert adapter.list_audit_events(type=signal, limit=2).items == [events[2], events[3]]
    listed = adapter.list_audit_events(symbol=symbol).items
    assert all(isinstance(e, AuditEvent) for e in listed)
    assert listed[0].details == {"score": "0.75", "reason": "crossover", "levels": [1, 2.5]}


def test_trades_and_audit_events_never_mix(adapter: StorageAdapter, store: EventStore) -> None:
    symbol = unique_symbol()
    portfolio = f"p-{uuid.uuid4().hex[:8]}"
    trade = make_trade(symbol, portfolio, T0)
    audit = make_audit(symbol, "OrderPlaced", T0)
    adapter.save_trade(trade)
    adapter.save_audit_event(audit)
    # other events carrying the same symbol, in other streams
    store.append(f"market-{symbol}", [NewEvent("PriceTick", {"symbol": symbol, "px": "1"})])
    store.append(
        f"portfolio-{portfolio}",
        [NewEvent("OrderPlaced", {"symbol": symbol, "occurred_at": T0.isoformat()})],
    )
    assert adapter.list_trades(symbol=symbol).items == [trade]
    assert adapter.list_trades(portfolio_id=portfolio).items == [trade]
    assert adapter.list_audit_events(symbol=symbol).items == [audit]
    assert adapter.list_audit_events(type="OrderPlaced", symbol=symbol).items == [audit]
    assert adapter.list_audit_events(type="PriceTick", symbol=symbol).items == []
    assert adapter.list_audit_events(type="TradeExecuted", symbol=symbol).items == []


def test_a_cancellation_needs_the_trade_in_that_portfolio(
    adapter: StorageAdapter, admin: psycopg.Connection[Any]
) -> None:
    """The projection would stop at a cancellation of a trade it never saw:
    the adapter refuses one before anything is written."""
    mine, other = (f"p-{uuid.uuid4().hex[:8]}" for _ in range(2))
    trade = make_trade(unique_symbol(), mine, T0)
    adapter.save_trade(trade)

    def cancel(trade_id: str, portfolio: str) -> Any:
        return adapter.cancel_trade(
            TradeCancelled(
                trade_id=trade_id, portfolio_id=portfolio, reason="busted", occurred_at=T0
            )
        )

    before = counts(admin)
    for trade_id, portfolio in (("never-executed", mine), (trade.trade_id, other)):
        with pytest.raises(ValidationError, match="was never executed") as info:
            cancel(trade_id, portfolio)
        assert info.value.field == "trade_id"
    assert counts(admin) == before  # nothing written, no key used up
    done = cancel(trade.trade_id, mine)
    assert done.duplicate is False
    assert cancel(trade.trade_id, mine).duplicate is True


# -- EXPLAIN on a log large enough to matter --------------------------------------

EVENTS = 60_000
SEED = f"""
INSERT INTO utcp.stored_events
       (event_id, stream_id, stream_version, type, data, symbol, occurred_at, created_at,
        prev_hash, hash)
SELECT gen_random_uuid(), s.stream_id, s.version, s.type, jsonb_build_object('g', g), s.symbol,
       timestamptz '2024-01-01 00:00+00' + g * interval '1 minute', now(),
       CASE WHEN s.version = 1 THEN NULL ELSE '\\x00'::bytea END,
       sha256(g::text::bytea)
  FROM generate_series(0, {EVENTS - 1}) AS g
 CROSS JOIN LATERAL (
    SELECT CASE g % 3 WHEN 0 THEN 'portfolio-p' || (g / 3) % 300
                      WHEN 1 THEN 'audit-S' || (g / 3) % 50
                      ELSE 'market-m' || (g / 3) % 20 END AS stream_id,
           CASE g % 3 WHEN 0 THEN (g / 3) / 300 + 1
                      WHEN 1 THEN (g / 3) / 50 + 1
                      ELSE (g / 3) / 20 + 1 END AS version,
           CASE g % 3 WHEN 0 THEN 'TradeExecuted'
                      WHEN 1 THEN 'Audit' || (g / 3) % 10
                      ELSE 'PriceTick' END AS type,
           CASE g % 3 WHEN 1 THEN 'S' || (g / 3) % 50 ELSE 'S' || g % 97 END AS symbol
 ) AS s
"""


@pytest.fixture(scope="module")
def big_log() -> Iterator[psycopg.Connection[Any]]:
    """A throwaway database holding 60,000 events of three categories."""
    with deployed_database("utcp_explain") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED)
        conn.execute("ANALYZE utcp.stored_events")
        row = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
        assert row == (EVENTS,)
        yield conn


def find_events_query(**filters: Any) -> tuple[sql.Composed, dict[str, Any]]:
    """The query and parameters EventStore.find_events sends for ``filters``."""
    names = ("type", "symbol", "category", "stream_id", "since", "until")
    query = store_sql.find_events(**{n: filters.get(n) is not None for n in names})
    params = {n: filters.get(n) for n in names}
    params["limit"] = filters.get("limit", 1000)
    return query, params


def trades_query(
    symbol: str | None = None,
    portfolio_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """What StorageAdapter.list_trades asks find_events for."""
    return find_events_query(
        type="TradeExecuted",
        symbol=symbol,
        stream_id=None if portfolio_id is None else f"portfolio-{portfolio_id}",
        since=since,
        until=until,
    )


def audit_query(
    symbol: str | None = None,
    type: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """What StorageAdapter.list_audit_events asks find_events for."""
    return find_events_query(category="audit", type=type, symbol=symbol, since=since, until=until)


def plan_nodes(
    conn: psycopg.Connection[Any], query: sql.Composable, params: Any
) -> list[dict[str, Any]]:
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params).fetchone()
    assert row is not None
    nodes: list[dict[str, Any]] = []
    stack = [row[0][0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


def assert_uses_index(nodes: list[dict[str, Any]], index: str | tuple[str, ...]) -> None:
    summary = [(n["Node Type"], n.get("Index Name"), n.get("Relation Name")) for n in nodes]
    seq = [
        n
        for n in nodes
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "stored_events"
    ]
    assert not seq, f"Seq Scan on stored_events: {summary}"
    used = {n.get("Index Name") for n in nodes}
    wanted = {index} if isinstance(index, str) else set(index)
    assert wanted & used, f"expected {index}: {summary}"


JAN = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
PORTFOLIO_TRADES = ("stored_events_stream_time", "stored_events_trade_id")


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (trades_query(symbol="S5"), "stored_events_symbol_time"),
        (
            trades_query(symbol="S5", since=JAN, until=JAN + 5 * 24 * HOUR),
            "stored_events_symbol_time",
        ),
        # A portfolio's trades: the stream's business-time index, or the
        # partial index of its trades (sqitch/deploy/index_tiebreak.sql),
        # whichever the planner finds cheaper for the stream's size.
        (trades_query(portfolio_id="p7"), PORTFOLIO_TRADES),
        (trades_query(portfolio_id="p7", since=JAN), PORTFOLIO_TRADES),
        (trades_query(since=JAN, until=JAN + 24 * HOUR), "stored_events_type_time"),
        (trades_query(), "stored_events_type_time"),
        (audit_query(symbol="S5"), "stored_events_symbol_time"),
        (audit_query(type="Audit3"), "stored_events_type_time"),
        (audit_query(type="Audit3", since=JAN, until=JAN + 24 * HOUR), "stored_events_type_time"),
        (audit_query(since=JAN, until=JAN + 24 * HOUR), "stored_events_category_time"),
        (audit_query(), "stored_events_category_time"),
    ],
    ids=[
        "trades-symbol",
        "trades-symbol-time",
        "trades-portfolio",
        "trades-portfolio-since",
        "trades-time",
        "trades-all",
        "audit-symbol",
        "audit-type",
        "audit-type-time",
        "audit-time",
        "audit-all",
    ],
)
def test_adapter_queries_use_the_indexes(
    big_log: psycopg.Connection[Any],
    query: tuple[sql.Composed, dict[str, Any]],
    index: str | tuple[str, ...],
) -> None:
    assert_uses_index(plan_nodes(big_log, *query), index)


@pytest.mark.parametrize("after", [("0", 0), ("middle", None)])
def test_read_all_uses_the_global_order_index(
    big_log: psycopg.Connection[Any], after: tuple[str, int | None]
) -> None:
    if after[0] == "middle":
        row = big_log.execute(
            "SELECT tx_id::text, position FROM utcp.stored_events ORDER BY position"
            " OFFSET %s LIMIT 1",
            (EVENTS // 2,),
        ).fetchone()
        assert row is not None
        after = (row[0], row[1])
    nodes = plan_nodes(big_log, sql.SQL(store_sql.READ_ALL), (*after, 1000))
    assert_uses_index(nodes, "stored_events_global_order")


def test_the_queries_answer_correctly_on_the_big_log(big_log: psycopg.Connection[Any]) -> None:
    """The plans above are for queries that return what they should."""
    query, params = trades_query(symbol="S5", since=JAN)
    rows = big_log.execute(query, params).fetchall()
    assert rows, "no rows: the EXPLAIN checks would be about an empty answer"
    assert all(r[5] == "TradeExecuted" and r[8] == "S5" and r[9] >= JAN for r in rows)
    times = [(r[9], r[0]) for r in rows]
    assert times == sorted(times)
