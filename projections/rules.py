"""The trading rules of docs/design.md §5, as pure functions on Decimals.

Average-cost positions, long and short; fees kept apart; cash. The one
rounding rule (docs/trading-rules.md) lives in :func:`round_cost`, and is
the only place a value is rounded: everything else is exact Decimal
arithmetic in :data:`CONTEXT`, which raises rather than rounds.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Final, Literal

import msgspec

__all__ = [
    "CONTEXT",
    "COST_QUANTUM",
    "PRECISION",
    "ZERO",
    "PositionState",
    "apply_fill",
    "cash_effect",
    "replay_fills",
    "round_cost",
]

ZERO: Final = Decimal(0)
#: avg_cost is kept to 12 decimal places.
COST_QUANTUM: Final = Decimal("1e-12")
_COST_PLACES: Final = 12
#: The context every rule computes in. It traps Inexact: an operation whose
#: exact result does not fit raises (decimal.Inexact, an ArithmeticError the
#: projection turns into a ProjectionError) instead of rounding, so no value
#: is ever changed silently; the one rounding is round_cost's, done by hand
#: on integers. 100 digits make that trap unreachable for any log this store
#: can hold (docs/trading-rules.md, "Why it is exact"): with amounts inside
#: eventstore.limits (|x| < 10**15, at most 18 places) every value of a
#: portfolio of N < 10**32 trades and cash movements fits in 67 + log10(N)
#: significant digits. (A Rounded without Inexact only drops trailing zeros:
#: the value is the same, so it is not trapped.)
PRECISION: Final = 100
CONTEXT: Final = decimal.Context(
    prec=PRECISION,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[
        decimal.Inexact,
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
    ],
)

Side = Literal["buy", "sell"]


def round_cost(numerator: Decimal, denominator: Decimal) -> Decimal:
    """numerator / denominator, rounded half-to-even to 12 decimal places.

    The exact quotient rounded once: integer floor division of the exact
    ratio scaled by 10**12, then half-to-even on the remainder. No Decimal
    division (whose own rounding at the context's precision could turn an
    exact quotient just off a tie into a tie, and round it the wrong way).
    """
    top, top_scale = numerator.as_integer_ratio()
    bottom, bottom_scale = denominator.as_integer_ratio()
    if bottom == 0:
        raise decimal.DivisionByZero(f"avg_cost of {numerator} / {denominator}")
    # numerator / denominator = (top · bottom_scale) / (top_scale · bottom)
    dividend = top * bottom_scale * 10**_COST_PLACES
    divisor = top_scale * bottom
    if divisor < 0:
        dividend, divisor = -dividend, -divisor
    whole, rest = divmod(dividend, divisor)  # floor: 0 <= rest < divisor
    if 2 * rest > divisor or (2 * rest == divisor and whole % 2 == 1):
        whole += 1
    return Decimal(whole).scaleb(-_COST_PLACES, context=CONTEXT)


class PositionState(msgspec.Struct, frozen=True):
    """One (portfolio, symbol) position."""

    quantity: Decimal = ZERO  # signed: negative is short
    avg_cost: Decimal = ZERO  # 0 when flat
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    trade_count: int = 0


def apply_fill(
    position: PositionState, side: Side, quantity: Decimal, price: Decimal, fee: Decimal
) -> PositionState:
    """The position after one trade (``quantity`` > 0, ``side`` buy or sell).

    * In the direction of the position, or from flat: adds to it, at
      avg_cost = (|qty|·avg_cost + q·price) / (|qty| + q).
    * Against it: closes min(q, |qty|) at ``price``, realizing
      closed · (price - avg_cost) · sign(qty); avg_cost is unchanged while
      the position stays open on the same side, 0 when flat, and ``price``
      for the remainder when the trade flips it.
    * Fees are summed apart, never folded into avg_cost.
    """
    with decimal.localcontext(CONTEXT):
        return _apply_fill(position, side, quantity, price, fee)


def _apply_fill(
    position: PositionState, side: Side, quantity: Decimal, price: Decimal, fee: Decimal
) -> PositionState:
    signed = quantity if side == "buy" else -quantity
    held = position.quantity
    avg = position.avg_cost
    realized = position.realized_pnl
    if held == 0 or (held > 0) == (signed > 0):
        size = abs(held)
        avg = round_cost(size * avg + quantity * price, size + quantity)
    else:
        closed = min(quantity, abs(held))
        direction = 1 if held > 0 else -1
        realized += closed * (price - avg) * direction
        if quantity > abs(held):
            avg = price  # flipped: the remainder opens at this price
        elif quantity == abs(held):
            avg = ZERO
    return PositionState(
        quantity=held + signed,
        avg_cost=avg,
        realized_pnl=realized,
        fees=position.fees + fee,
        trade_count=position.trade_count + 1,
    )


def replay_fills(fills: list[tuple[Side, Decimal, Decimal, Decimal]]) -> PositionState:
    """A position rebuilt from its trades, in order (after a cancellation)."""
    position = PositionState()
    for side, quantity, price, fee in fills:
        position = apply_fill(position, side, quantity, price, fee)
    return position


def cash_effect(side: Side, quantity: Decimal, price: Decimal, fee: Decimal) -> Decimal:
    """Cash moved by a trade: a buy costs q·price + fee, a sell brings q·price - fee."""
    with decimal.localcontext(CONTEXT):
        notional = quantity * price
        return -(notional + fee) if side == "buy" else notional - fee
