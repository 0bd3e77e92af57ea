"""projections.rules against hand-computed values (docs/trading-rules.md)
and against the independent reference model (tests/support/reference_model.py)."""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from projections.rules import (
    CONTEXT,
    PRECISION,
    PositionState,
    apply_fill,
    cash_effect,
    replay_fills,
    round_cost,
)
from tests.support.reference_model import avg_cost_rounded, fold_position, reference_model

D = Decimal
#: For the tests' own sums: exact or an exception, never a silent rounding.
EXACT = decimal.Context(prec=500, traps=[decimal.Inexact, decimal.Rounded])
Fill = tuple[str, Decimal, Decimal, Decimal]


def chain(fills: list[Fill]) -> PositionState:
    state = PositionState()
    for side, q, price, fee in fills:
        state = apply_fill(state, side, q, price, fee)  # type: ignore[arg-type]
    return state


def as_tuple(state: PositionState) -> tuple[Decimal, Decimal, Decimal, Decimal, int]:
    return (state.quantity, state.avg_cost, state.realized_pnl, state.fees, state.trade_count)


def same(a: tuple[Decimal | int, ...], b: tuple[Decimal | int, ...]) -> None:
    """Exactly equal values (Decimal equality is exact: no tolerance)."""
    assert a == b, f"{a} != {b}"


# -- the rounding rule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [
        ("41", "4", "10.250000000000"),  # 3 @ 10 + 1 @ 11: exact
        ("60.03", "6", "10.005000000000"),
        ("70.05", "7", "10.007142857143"),  # 10.007142857142|857…: rounds up
        ("20", "3", "6.666666666667"),
        ("10", "3", "3.333333333333"),  # rounds down
        ("40.000000000002", "4", "10.000000000000"),  # tie …0|5 → even 0
        ("40.000000000006", "4", "10.000000000002"),  # tie …1|5 → even 2
        ("0.0000000000025", "1", "0.000000000002"),  # tie → even 2
        ("0.0000000000035", "1", "0.000000000004"),  # tie → even 4
        ("0.00000000000250001", "1", "0.000000000003"),  # just above a tie
        ("0", "5", "0E-12"),
    ],
)
def test_round_cost_hand_values(num: str, den: str, expected: str) -> None:
    got = round_cost(D(num), D(den))
    assert got == D(expected)
    assert got.as_tuple().exponent == -12  # always 12 places
    assert avg_cost_rounded(D(num), D(den)) == D(expected)


@given(
    num=st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False),
    den=st.decimals(min_value=D("0.0001"), max_value=10**9, places=4, allow_nan=False),
)
@settings(max_examples=400)
def test_round_cost_is_the_exact_quotient_rounded_once(num: Decimal, den: Decimal) -> None:
    got = round_cost(num, den)
    assert got == avg_cost_rounded(num, den)
    # Within half a unit of the 12th place of the exact quotient.
    assert abs(Fraction(got) - Fraction(num) / Fraction(den)) <= Fraction(1, 2 * 10**12)


# -- apply_fill by hand -----------------------------------------------------------


def test_buy_from_flat_and_add() -> None:
    s = apply_fill(PositionState(), "buy", D(3), D(10), D("1.00"))
    same(as_tuple(s), (D(3), D(10), D(0), D("1.00"), 1))
    s = apply_fill(s, "buy", D(1), D(11), D("0.50"))
    same(as_tuple(s), (D(4), D("10.25"), D(0), D("1.50"), 2))


def test_partial_sell_keeps_avg_cost_and_realizes() -> None:
    s = chain([("buy", D(4), D("10.25"), D(0)), ("sell", D(1), D(12), D("0.30"))])
    same(as_tuple(s), (D(3), D("10.25"), D("1.75"), D("0.30"), 2))


def test_closing_to_flat_zeroes_avg_cost() -> None:
    s = chain([("buy", D(2), D(10), D(1)), ("sell", D(2), D(9), D(1))])
    same(as_tuple(s), (D(0), D(0), D(-2), D(2), 2))


def test_flip_long_to_short_opens_remainder_at_price() -> None:
    s = chain([("buy", D(5), D(10), D(0)), ("sell", D(8), D("10.40"), D("1.25"))])
    # closes 5 at 10.40: +2.00; the remaining 3 open a short at 10.40
    same(as_tuple(s), (D(-3), D("10.40"), D(2), D("1.25"), 2))


def test_short_add_cover_and_flip_to_long() -> None:
    s = chain(
        [
            ("sell", D(2), D(20), D(0)),
            ("sell", D(2), D(22), D(0)),  # short 4 @ 21
            ("buy", D(1), D(19), D(0)),  # covers 1: +2 (short gains below its cost)
            ("buy", D(1), D(23), D(0)),  # covers 1: -2
        ]
    )
    same(as_tuple(s), (D(-2), D(21), D(0), D(0), 4))
    s = apply_fill(s, "buy", D(5), D(20), D("0.10"))  # covers 2 (+2), flips: long 3 @ 20
    same(as_tuple(s), (D(3), D(20), D(2), D("0.10"), 5))


def test_fees_never_fold_into_avg_cost() -> None:
    s = chain([("buy", D(1), D(100), D(50)), ("buy", D(1), D(200), D(70))])
    assert s.avg_cost == D(150)
    assert s.fees == D(120)
    assert s.realized_pnl == 0


def test_flip_price_is_not_rounded_but_flat_open_is() -> None:
    price = D("1.0000000000004")  # 13 places
    from_flat = apply_fill(PositionState(), "buy", D(1), price, D(0))
    assert from_flat.avg_cost == D("1.000000000000")
    flipped = chain([("sell", D(1), D(2), D(0)), ("buy", D(2), price, D(0))])
    assert flipped.avg_cost == price


def test_worked_example_chain_of_the_docs() -> None:
    fills: list[Fill] = [
        ("buy", D(3), D("10.00"), D("1.00")),
        ("buy", D(3), D("10.01"), D("1.00")),
        ("buy", D(1), D("10.02"), D("0.50")),
        ("sell", D(2), D("10.50"), D("1.00")),
        ("sell", D(8), D("10.40"), D("1.25")),
        ("buy", D(3), D("10.10"), D("0.75")),
    ]
    expected = [
        (D(3), D("10.000000000000"), D(0), D("1.00"), 1),
        (D(6), D("10.005000000000"), D(0), D("2.00"), 2),
        (D(7), D("10.007142857143"), D(0), D("2.50"), 3),
        (D(5), D("10.007142857143"), D("0.985714285714"), D("3.50"), 4),
        (D(-3), D("10.40"), D("2.949999999999"), D("4.75"), 5),
        (D(0), D(0), D("3.849999999999"), D("5.50"), 6),
    ]
    state = PositionState()
    for (side, q, price, fee), want in zip(fills, expected, strict=True):
        state = apply_fill(state, side, q, price, fee)  # type: ignore[arg-type]
        same(as_tuple(state), want)
    # Cancelling the third buy: replayed from the remaining trades.
    remaining = fills[:2] + fills[3:]
    same(as_tuple(replay_fills(remaining)), (D(-1), D("10.40"), D("3.47"), D("5.00"), 5))  # type: ignore[arg-type]


def test_cash_effect() -> None:
    assert cash_effect("buy", D(3), D("10.01"), D("1.00")) == D("-31.03")
    assert cash_effect("sell", D(8), D("10.40"), D("1.25")) == D("81.95")
    assert cash_effect("sell", D(1), D(0), D("0.10")) == D("-0.10")


def test_long_values_inside_the_documented_range_are_exact() -> None:
    # ~22-25 significant digits each: inside the documented exact range.
    q = D("1234567890123.456789012345")
    p = D("9876543210.987654321098")
    with decimal.localcontext(EXACT):
        assert cash_effect("sell", q, p, D(0)) == q * p
        assert cash_effect("buy", q, p, D("0.01")) == -(q * p) - D("0.01")
        s = chain([("buy", q, p, D(0)), ("sell", q, p + 1, D(0))])
        assert s.avg_cost == 0
        assert s.realized_pnl == q  # (p + 1 - p)·q, exact


# -- against the reference model ---------------------------------------------------

quantities = st.one_of(
    st.integers(1, 50).map(D),
    st.decimals(min_value=D("0.0001"), max_value=1000, places=4, allow_nan=False),
)
prices = st.one_of(
    st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False),
    st.decimals(min_value=D("0.000001"), max_value=10, places=6, allow_nan=False),
    st.decimals(min_value=0, max_value=5, places=14, allow_nan=False),  # beyond 12 places
)
fees = st.decimals(min_value=0, max_value=5, places=2, allow_nan=False)
sides = st.sampled_from(["buy", "sell"])
fill_lists = st.lists(st.tuples(sides, quantities, prices, fees), max_size=40)


def flip_heavy(fills: list[Fill]) -> list[Fill]:
    """Make zero-crossings likely: every other trade reverses the whole position."""
    out: list[Fill] = []
    held = D(0)
    for i, (drawn_side, drawn_q, price, fee) in enumerate(fills):
        side, q = drawn_side, drawn_q
        if i % 2 == 1 and held != 0:
            side = "sell" if held > 0 else "buy"
            q = abs(held) + (drawn_q if i % 4 == 1 else 0)  # flip, or close exactly to flat
        held += q if side == "buy" else -q
        out.append((side, q, price, fee))
    return out


@given(fills=st.one_of(fill_lists, fill_lists.map(flip_heavy)))
@settings(max_examples=300)
@example(
    fills=[
        ("buy", D(3), D("10.00"), D(1)),
        ("buy", D(3), D("10.01"), D(1)),
        ("buy", D(1), D("10.02"), D("0.50")),
        ("sell", D(8), D("10.40"), D(0)),
        ("buy", D(1), D("10.40"), D(0)),
    ]
)
def test_apply_fill_chain_equals_reference_model(fills: list[Fill]) -> None:
    product = chain(fills)
    model = fold_position(fills)
    same(
        as_tuple(product),
        (model.quantity, model.avg_cost, model.realized_pnl, model.fees, model.trade_count),
    )
    same(as_tuple(replay_fills(fills)), as_tuple(product))  # type: ignore[arg-type]
    # Invariants that hold whatever the order: the signed quantity and the fees
    # are plain sums; flat means avg_cost 0.
    with decimal.localcontext(EXACT):
        assert product.quantity == sum((q if s == "buy" else -q for s, q, _, _ in fills), D(0))
        assert product.fees == sum((f for _, _, _, f in fills), D(0))
    if product.quantity == 0:
        assert product.avg_cost == 0


@given(fills=fill_lists, data=st.data())
@settings(max_examples=150)
def test_cancellation_in_the_model_equals_replay_of_remaining(
    fills: list[Fill], data: st.DataObject
) -> None:
    """The model fed events (with cancellations) gives the position that
    replay_fills gives for the remaining trades, and the cash that
    cash_effect sums to."""
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).isoformat()
    cancelled = data.draw(st.sets(st.integers(0, max(0, len(fills) - 1)), max_size=len(fills)))

    def cancel(i: int) -> tuple[str, object]:
        payload = {"trade_id": f"t{i}", "portfolio_id": "p", "reason": "", "occurred_at": at}
        return ("TradeCancelled", payload)

    opened = {"portfolio_id": "p", "name": "p", "base_currency": "USD", "opened_at": at}
    events: list[tuple[str, object]] = [("PortfolioOpened", opened)]
    for i, (side, q, price, fee) in enumerate(fills):
        trade = {
            "trade_id": f"t{i}",
            "portfolio_id": "p",
            "symbol": "X",
            "side": side,
            "quantity": str(q),
            "price": str(price),
            "fees": str(fee),
            "executed_at": at,
        }
        events.append(("TradeExecuted", trade))
        if i in cancelled and data.draw(st.booleans()):
            events.append(cancel(i))  # right after the trade…
    # …or at the end; some of them twice (a no-op).
    events.extend(cancel(i) for i in sorted(cancelled))
    trades, positions, portfolios = reference_model(events)  # type: ignore[arg-type]
    remaining = [f for i, f in enumerate(fills) if i not in cancelled]
    if remaining:
        want = replay_fills(remaining)  # type: ignore[arg-type]
        row = positions[("p", "X")]
        same(
            (
                row["quantity"],
                row["avg_cost"],
                row["realized_pnl"],
                row["fees"],
                row["trade_count"],
            ),
            as_tuple(want),
        )
        assert portfolios["p"]["realized_pnl"] == want.realized_pnl
    else:
        assert positions == {}
        assert portfolios["p"]["realized_pnl"] == 0
    with decimal.localcontext(EXACT):
        cash = sum((cash_effect(s, q, p, f) for s, q, p, f in remaining), D(0))  # type: ignore[arg-type]
    assert portfolios["p"]["cash"] == cash
    assert {t for t, r in trades.items() if r["status"] == "cancelled"} == {
        f"t{i}" for i in cancelled
    }


# -- the edges of the documented limits (eventstore.limits) ------------------------------

#: The largest amount eventstore.limits accepts: below 10**15, 18 places (33 digits).
TOP = D(f"{10**33 - 1}e-18")  # 999999999999999.999999999999999999
WEI = D("1e-18")


def wei(n: int) -> Decimal:
    """n·10**-18, exactly (Decimal.scaleb would round in the default context)."""
    return D(f"{n}e-18")


edge_amounts = st.one_of(
    st.integers(10**33 - 10**9, 10**33 - 1).map(wei),  # near the top
    st.integers(1, 10**33 - 1).map(wei),  # anywhere, 18 places
    st.integers(1, 10**6).map(wei),  # a few wei
    st.integers(1, 10**15 - 1).map(D),  # whole units, up to the top
)
edge_fees = st.one_of(st.just(D(0)), edge_amounts)
edge_fills = st.lists(st.tuples(sides, edge_amounts, edge_amounts, edge_fees), max_size=30)


def exact_cash(fills: list[Fill]) -> Fraction:
    total = Fraction(0)
    for side, q, price, fee in fills:
        notional = Fraction(q) * Fraction(price)
        total += -(notional + Fraction(fee)) if side == "buy" else notional - Fraction(fee)
    return total


def test_cash_effect_at_the_top_of_the_limits_is_exact() -> None:
    # 33 x 33 significant digits: a 66-digit product, which a 60-digit context rounded.
    exact = Fraction(TOP) * Fraction(TOP)
    assert Fraction(cash_effect("sell", TOP, TOP, D(0))) == exact
    assert Fraction(cash_effect("buy", TOP, TOP, WEI)) == -exact - Fraction(WEI)
    assert Fraction(cash_effect("sell", TOP, TOP, TOP)) == exact - Fraction(TOP)


def test_round_cost_is_not_fooled_by_a_near_tie_beyond_the_context() -> None:
    # 10**30 + half a unit of the 12th place + 10**-36: just above the tie, so it
    # rounds up. A 60-digit division dropped the 10**-36, saw an exact tie and
    # rounded to the even (down).
    num = D("1000000000000000000000000000000.000000000000500000000000000000000001")
    up = D("1000000000000000000000000000000.000000000001")
    assert round_cost(num, D(1)) == up
    assert round_cost(num, D(1)) == avg_cost_rounded(num, D(1))
    assert round_cost(num.copy_negate(), D(1)) == up.copy_negate()
    # ...and the exact tie still goes to the even.
    tie = D("1000000000000000000000000000000.0000000000005")
    assert round_cost(tie, D(1)) == D(10**30)
    thrice = D("3000000000000000000000000000000.000000000001500000000000000000000003")
    assert round_cost(thrice, D(3)) == up


def test_a_round_trip_at_the_top_realizes_exactly() -> None:
    p2 = D("999999999999999.999999999999999998")
    s = chain([("buy", TOP, TOP, TOP), ("sell", TOP, p2, TOP)])
    # avg_cost is TOP rounded to 12 places (the one rounding), and the realized
    # P&L is exact against that rounded cost.
    avg = round_cost(TOP, D(1))
    assert avg == D(10**15)
    assert Fraction(s.realized_pnl) == Fraction(TOP) * (Fraction(p2) - Fraction(avg))
    assert Fraction(s.fees) == 2 * Fraction(TOP)
    assert s.quantity == 0 and s.avg_cost == 0


@given(fills=st.one_of(edge_fills, edge_fills.map(flip_heavy)))
@settings(max_examples=200)
@example(fills=[("buy", TOP, TOP, TOP), ("buy", TOP, TOP, TOP), ("sell", TOP, WEI, TOP)])
def test_amounts_at_the_limits_are_exact_but_for_avg_cost(fills: list[Fill]) -> None:
    product = chain(fills)
    model = fold_position(fills)
    same(
        as_tuple(product),
        (model.quantity, model.avg_cost, model.realized_pnl, model.fees, model.trade_count),
    )
    assert Fraction(product.quantity) == sum(
        (Fraction(q) if s == "buy" else -Fraction(q) for s, q, _, _ in fills), Fraction(0)
    )
    assert Fraction(product.fees) == sum((Fraction(f) for _, _, _, f in fills), Fraction(0))
    with decimal.localcontext(CONTEXT):  # the projection's own running sum of cash
        cash = sum((cash_effect(s, q, p, f) for s, q, p, f in fills), D(0))  # type: ignore[arg-type]
    assert Fraction(cash) == exact_cash(fills)


def test_a_long_sequence_at_the_top_stays_exact() -> None:
    # 20 000 trades of the largest amounts: sums of 66-digit products grow to
    # 71 digits; quantity, fees, realized P&L and cash stay exact.
    fills: list[Fill] = []
    for i in range(10_000):
        fills.append(("buy", TOP, wei(10**33 - 1 - i), TOP))
        fills.append(("sell", TOP, wei(10**33 - 2 - i), TOP))
    state = chain(fills)
    model = fold_position(fills)
    same(
        as_tuple(state),
        (model.quantity, model.avg_cost, model.realized_pnl, model.fees, model.trade_count),
    )
    assert Fraction(state.fees) == 20_000 * Fraction(TOP)
    with decimal.localcontext(CONTEXT):
        cash = sum((cash_effect(s, q, p, f) for s, q, p, f in fills), D(0))  # type: ignore[arg-type]
    assert Fraction(cash) == exact_cash(fills)


def test_the_context_raises_rather_than_rounds() -> None:
    # Beyond the bound (far more than any log holds), an inexact result is an
    # error, never a silently changed number.
    with decimal.localcontext(CONTEXT), pytest.raises(decimal.Inexact):
        _ = D(10**PRECISION + 1) * D(10**PRECISION + 1)
    # Trailing zeros only: the same value, not an error.
    with decimal.localcontext(CONTEXT):
        long_one = D("1." + "0" * 150)
        assert long_one * long_one == 1
