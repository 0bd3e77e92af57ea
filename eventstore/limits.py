"""The ranges a stored value must stay in to read back the way it went in.

A timestamp is stored as ``timestamptz`` and read back by psycopg as a
Python ``datetime``, in the reader's time zone: one within a day of
Python's limits (years 1 and 9999) is accepted by PostgreSQL but cannot be
read back, and a log cannot drop an event that no reader can load. Money
and quantities are Decimals the projections compute with exactly (a
60-digit context): an amount like ``1E+999999`` would overflow it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Final

__all__ = ["MAX_AMOUNT_DIGITS", "MAX_DECIMAL_PLACES", "amount_problem", "time_problem"]

#: The earliest and latest business times, in UTC, with a day's margin for
#: any reader's time zone.
EARLIEST: Final = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
#: Amounts (quantities, prices, fees, cash): fewer than 10**15 in absolute
#: value, at most 18 decimal places (a wei of ether).
MAX_AMOUNT_DIGITS: Final = 15
MAX_DECIMAL_PLACES: Final = 18


def time_problem(value: dt.datetime) -> str | None:
    """Why ``value`` cannot be stored as a business time, or None."""
    if value.tzinfo is None or value.utcoffset() is None:
        return "must be timezone-aware"
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        return (
            f"must be between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()} "
            f"(UTC), got {value.isoformat()}"
        )
    return None


def amount_problem(value: Decimal) -> str | None:
    """Why ``value`` cannot be stored as an amount, or None."""
    if not value.is_finite():
        return f"must be a finite decimal, got {value!r}"
    if value == 0:
        return None
    if value.adjusted() >= MAX_AMOUNT_DIGITS:
        return f"must be less than 10**{MAX_AMOUNT_DIGITS} in absolute value, got {value}"
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= -MAX_DECIMAL_PLACES:  # the usual case: nothing to count
        return None
    # Trailing zeros are not places: 1.50000000000000000000 has one.
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if exponent + zeros < -MAX_DECIMAL_PLACES:
        return f"must have at most {MAX_DECIMAL_PLACES} decimal places, got {value}"
    return None
