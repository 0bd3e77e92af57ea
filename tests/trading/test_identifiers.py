"""The trading events' ids follow the log's one identifier rule
(eventstore.codec.check_identifier): built in code or decoded, the same
answers, the same errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from eventstore.codec import check_identifier
from eventstore.errors import ValidationError
from eventstore.limits import MAX_ID_LENGTH
from trading.events import AuditEvent, PortfolioOpened, Trade

AT = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)

SAMPLES = [
    "t-1",
    "Amélie",  # composed (NFC)
    "Ame\u0301lie",  # decomposed: looks the same
    "t\u200b1",  # zero-width space
    "t\u2066-1",  # bidi isolate
    "t\x851",  # C1 control (NEL)
    "t\x00",
    "t\n1",
    " ",
    "\u3000",  # ideographic space: blank
    "",
    "x" * MAX_ID_LENGTH,
    "x" * (MAX_ID_LENGTH + 1),
    "\ud800",  # lone surrogate
]


def store_accepts(value: str) -> bool:
    try:
        check_identifier(value, "id", what="id")
    except ValidationError:
        return False
    return True


def trade(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "trade_id": "t-1",
        "portfolio_id": "p-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal(1),
        "price": Decimal(2),
        "executed_at": AT,
    }
    fields.update(changes)
    return fields


@pytest.mark.parametrize("value", SAMPLES)
@pytest.mark.parametrize("field", ["trade_id", "portfolio_id", "order_id"])
def test_trade_ids_follow_the_store_rule(value: str, field: str) -> None:
    accepted = store_accepts(value)
    if accepted:
        built = Trade(**trade(**{field: value}))
        assert getattr(built, field) == value
        decoded = msgspec.convert(trade(**{field: value}), Trade)
        assert decoded == built
        return
    with pytest.raises(ValidationError) as info:
        Trade(**trade(**{field: value}))
    assert info.value.field == field
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(trade(**{field: value}), Trade)


@pytest.mark.parametrize("value", SAMPLES)
def test_other_events_use_the_same_rule(value: str) -> None:
    accepted = store_accepts(value)
    for build in (
        lambda: PortfolioOpened(portfolio_id=value, name="n", base_currency="USD", opened_at=AT),
        lambda: AuditEvent(id="a-1", type="Note", symbol="AAPL", actor=value, occurred_at=AT),
    ):
        if accepted:
            build()
        else:
            with pytest.raises(ValidationError):
                build()
