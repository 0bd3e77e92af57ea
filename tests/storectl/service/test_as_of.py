"""positions_as_of (replayed from the portfolio's stream by the projection's
rules) equals the projection after the same events, and stops at T."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx

from tests.support.database import run_cli


def _call(http: httpx.Client, key: str, tool: str, payload: dict[str, Any]) -> Any:
    response = http.post(f"/k/{key}/tools", json={"tool": tool, "input": payload})
    assert response.status_code == 200, response.text
    return response.json()["output"]


def _position(checkpoint: str) -> tuple[int, int]:
    tx, _, pos = checkpoint.partition("/")
    return int(tx), int(pos)


def test_as_of_matches_the_projection(
    http: httpx.Client, keys: dict[str, str], service_db: str
) -> None:
    w = keys["writer"]
    pid = f"asof-{uuid.uuid4().hex[:8]}"
    at = "2026-12-01T09:00:00Z"
    _call(
        http,
        w,
        "trading.open_portfolio",
        {"portfolio": {"portfolio_id": pid, "name": "P", "base_currency": "USD", "opened_at": at}},
    )
    _call(
        http,
        w,
        "trading.deposit_cash",
        {
            "deposit": {
                "deposit_id": "d1",
                "portfolio_id": pid,
                "amount": "100000",
                "occurred_at": at,
            }
        },
    )
    fills = [
        ("t1", "AAPL", "buy", "10", "100.10"),
        ("t2", "AAPL", "buy", "5", "101.30"),
        ("t3", "AAPL", "sell", "20", "102"),
        ("t4", "MSFT", "sell", "3", "400.5"),
        ("t5", "MSFT", "buy", "1", "399"),
    ]
    for tid, symbol, side, qty, price in fills:
        _call(
            http,
            w,
            "trading.record_trade",
            {
                "trade": {
                    "trade_id": f"{pid}-{tid}",
                    "portfolio_id": pid,
                    "symbol": symbol,
                    "side": side,
                    "quantity": qty,
                    "price": price,
                    "executed_at": at,
                    "fees": "0.35",
                }
            },
        )
    middle = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    _call(
        http,
        w,
        "trading.cancel_trade",
        {
            "cancel": {
                "trade_id": f"{pid}-t2",
                "portfolio_id": pid,
                "reason": "busted",
                "occurred_at": at,
            }
        },
    )
    _call(
        http,
        w,
        "trading.withdraw_cash",
        {
            "withdrawal": {
                "withdrawal_id": "w1",
                "portfolio_id": pid,
                "amount": "50",
                "occurred_at": at,
            }
        },
    )

    # The projection reads the global log, which waits for every older
    # transaction of the (shared) cluster: catch up until its checkpoint has
    # passed the portfolio's last event.
    last = _call(http, w, "store.read_stream", {"stream": f"portfolio-{pid}", "limit": 1000})
    target = _position(last["events"][-1]["checkpoint"])
    deadline = time.monotonic() + 60
    while True:
        run_cli("project", "catch-up", "--dsn", service_db)
        lag = _call(http, w, "trading.get_positions", {"portfolio_id": pid})["lag"]
        if _position(lag["checkpoint"]) >= target:
            break
        assert time.monotonic() < deadline, f"the projection stays at {lag}"
        time.sleep(0.5)
    now = _call(
        http,
        w,
        "trading.positions_as_of",
        {"portfolio_id": pid, "as_of": dt.datetime.now(dt.UTC).isoformat()},
    )
    projected = _call(http, w, "trading.get_positions", {"portfolio_id": pid})
    portfolio = _call(http, w, "trading.get_portfolio", {"portfolio_id": pid})["portfolio"]
    fields = ("quantity", "avg_cost", "realized_pnl", "fees")
    assert [
        (p["symbol"], *(Decimal(p[f]) for f in fields), p["trade_count"]) for p in now["positions"]
    ] == [
        (p["symbol"], *(Decimal(p[f]) for f in fields), p["trade_count"])
        for p in sorted(projected["positions"], key=lambda p: p["symbol"])
    ]
    for name in ("cash", "realized_pnl", "fees"):
        assert Decimal(now[name]) == Decimal(portfolio[name]), name
    assert now["events"] == 9

    # before the cancellation and the withdrawal: t2 still counts
    then = _call(
        http, w, "trading.positions_as_of", {"portfolio_id": pid, "as_of": middle.isoformat()}
    )
    assert then["events"] == 7
    aapl = next(p for p in then["positions"] if p["symbol"] == "AAPL")
    assert aapl["trade_count"] == 3 and Decimal(aapl["quantity"]) == Decimal(-5)
    assert Decimal(then["cash"]) != Decimal(now["cash"])
