"""The read models' rows: Structs whose fields are the tables' columns
(the SQL's column lists come from them), handed out with plain decimals."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from projections import sql
from projections.models import (
    Portfolio,
    Position,
    TradeRow,
    decimal_text,
    plain_decimal,
    row_of,
)

NOW = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)


def test_plain_decimal_examples() -> None:
    cases = {
        "230.500000000000": "230.5",
        "0E-12": "0",
        "-0.000": "0",
        "1E+2": "100",
        "1.000E+3": "1000",
        "-5.10": "-5.1",
        "7": "7",
        "0.000000000001": "0.000000000001",
        "123456789012345678901234567890.123456789000": "123456789012345678901234567890.123456789",
    }
    for given_, plain in cases.items():
        assert decimal_text(Decimal(given_)) == plain
        assert plain_decimal(Decimal(given_)) == Decimal(given_)
    # The Decimal itself: no trailing zeros, no positive exponent.
    assert str(plain_decimal(Decimal("230.500000000000"))) == "230.5"
    assert str(plain_decimal(Decimal("0E-12"))) == "0"
    assert str(plain_decimal(Decimal("1E+2"))) == "100"


@given(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=30),
)
def test_plain_decimal_keeps_the_value_and_writes_no_exponent(value: Decimal, zeros: int) -> None:
    # The same value with ``zeros`` trailing zeros more (as numeric columns
    # give them back), built exactly (quantize would round past 28 digits).
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    padded = Decimal((sign, (*digits, *([0] * zeros)), exponent - zeros))
    for number in (value, padded):
        plain = plain_decimal(number)
        assert plain == number  # the same value, exactly
        assert "E+" not in str(plain)
        text = decimal_text(number)
        assert "E" not in text and Decimal(text) == number
        if "." in text:
            assert not text.endswith("0")


def test_columns_come_from_the_structs() -> None:
    assert {
        "trades": TradeRow.__struct_fields__,
        "positions": Position.__struct_fields__,
        "portfolios": Portfolio.__struct_fields__,
    } == sql.COLUMNS


def test_row_of_maps_by_name_and_tidies_decimals() -> None:
    # Columns in another order than the Struct's fields: mapped by name.
    row = {
        "updated_at": NOW,
        "trade_count": 3,
        "fees": Decimal("0E-12"),
        "realized_pnl": Decimal("-12.500000000000"),
        "avg_cost": Decimal("230.500000000000"),
        "quantity": Decimal("1E+2"),
        "symbol": "AAPL",
        "portfolio_id": "p-1",
    }
    position = row_of(Position, row)
    assert position == Position(
        portfolio_id="p-1",
        symbol="AAPL",
        quantity=Decimal(100),
        avg_cost=Decimal("230.5"),
        realized_pnl=Decimal("-12.5"),
        fees=Decimal(0),
        trade_count=3,
        updated_at=NOW,
    )
    assert [str(position.quantity), str(position.avg_cost), str(position.fees)] == [
        "100",
        "230.5",
        "0",
    ]
