"""The ranges a stored value must stay in to read back the way it went in.

A timestamp is stored as ``timestamptz`` and read back by psycopg as a
Python ``datetime``, in the reader's time zone: one within a day of
Python's limits (years 1 and 9999) is accepted by PostgreSQL but cannot be
read back, and a log cannot drop an event that no reader can load. Money
and quantities are Decimals the projections compute with exactly: below
10**15 with at most 18 places, an amount has at most 33 significant digits,
a product of two at most 66, and every sum the trading rules keep fits in
projections.rules.CONTEXT (100 digits, Inexact trapped, so nothing is ever
rounded silently) for any portfolio of fewer than 10**32 events
(docs/trading-rules.md, "Why it is exact"). The one rounding is avg_cost's,
to 12 places.

The log's own limits (identifiers, sizes, depth, numbers, time strings) are
enforced twice: here, by the client first, and by the database
(``utcp.log_limits()``, sqitch/deploy/append_guarded.sql), whoever calls it.
The numbers are the same (tests/integration/test_hostile_append.py compares
them). Readers load the stored jsonb through psycopg and msgspec: a number
like ``1e5000`` becomes a 5001-digit integer msgspec refuses ("Integer value
out of range" past 4300 digits), a non-integer past 1.8e308 is "Number out
of range", one below 5e-324 silently reads back as 0.0, and nesting deeper
than about 1000 levels is a RecursionError.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Final

__all__ = [
    "BLANK_PATTERN",
    "CONTROL_PATTERN",
    "MAX_AMOUNT_DIGITS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_BIGINT",
    "MAX_DECIMAL_PLACES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_ID_LENGTH",
    "MAX_NUMBER_EXPONENT",
    "MAX_TYPE_LENGTH",
    "TIME_PATTERN",
    "TYPE_PATTERN",
    "amount_problem",
    "time_problem",
]

#: The earliest and latest business times, in UTC, with a day's margin for
#: any reader's time zone.
EARLIEST: Final = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
#: Amounts (quantities, prices, fees, cash): fewer than 10**15 in absolute
#: value, at most 18 decimal places (a wei of ether).
MAX_AMOUNT_DIGITS: Final = 15
MAX_DECIMAL_PLACES: Final = 18

#: Stream ids, idempotency keys and symbols: at most this many characters,
#: not blank, no control characters.
MAX_ID_LENGTH: Final = 200
#: One event's data + metadata, encoded (the database measures the stored,
#: normalised jsonb text, which is a little larger than msgspec's compact
#: form). Settings.max_event_bytes may lower it, not raise it.
MAX_EVENT_BYTES: Final = 1_048_576
#: Events in one append. Settings.max_batch_events may lower it.
MAX_BATCH_EVENTS: Final = 10_000
#: All events of one append together, measured like MAX_EVENT_BYTES.
MAX_BATCH_BYTES: Final = 64 * 1_048_576
#: Nesting of data and metadata: the object itself is level 1. msgspec (and
#: Python) give up near 1000 levels; 64 leaves room for any real payload.
MAX_DEPTH: Final = 64
#: Numbers in data and metadata: 0, or 1e-300 <= |x| < 1e300, so every
#: reader decodes them as what they are (see above).
MAX_NUMBER_EXPONENT: Final = 300
#: An event type name (Python ``re.fullmatch`` here, ``~ '^...$'`` in SQL),
#: at most MAX_TYPE_LENGTH characters. No counted repetitions ({n,m}) in
#: these patterns: PostgreSQL's regex engine pays for them on every match.
TYPE_PATTERN: Final = r"[A-Za-z][A-Za-z0-9_.:-]*"
MAX_TYPE_LENGTH: Final = 128
#: A business time written as text: ISO 8601 (RFC 3339) with a zone and at
#: most microseconds, which PostgreSQL, Python and msgspec read alike,
#: whatever the session's TimeZone. PostgreSQL takes offsets up to 15:59.
TIME_PATTERN: Final = (
    r"(?!0000)[0-9][0-9][0-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9][0-9]?[0-9]?[0-9]?[0-9]?[0-9]?)?"
    r"(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])"
)
#: What counts as blank in an identifier once control characters are
#: refused: the rest of what Python's str.strip() removes.
BLANK_PATTERN: Final = r"[ \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
#: What no identifier (stream id, idempotency key, symbol) may contain
#: (``re.search`` here, ``~`` in SQL): C0 controls, DEL and C1 controls, and
#: the invisible and bidirectional formatting characters that make two ids
#: look alike or reorder what a terminal shows (soft hyphen, Arabic letter
#: mark, Mongolian vowel separator, zero-width spaces and joiners, LRM/RLM,
#: embeddings, overrides and isolates, word joiner and invisible operators,
#: BOM). NUL is refused before this (PostgreSQL text cannot hold it).
CONTROL_PATTERN: Final = (
    r"[\x01-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u2069\ufeff]"
)
#: The largest offset from UTC PostgreSQL accepts in a timestamp.
MAX_UTC_OFFSET: Final = dt.timedelta(hours=15, minutes=59)


def time_problem(value: dt.datetime) -> str | None:
    """Why ``value`` cannot be stored as a business time, or None."""
    offset = value.utcoffset() if value.tzinfo is not None else None
    if offset is None:
        return "must be timezone-aware"
    if abs(offset) > MAX_UTC_OFFSET or offset % dt.timedelta(minutes=1):
        return f"must have a UTC offset of whole minutes, at most 15:59, got {offset}"
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


#: The largest bigint: versions, positions and limits beyond it are refused
#: here (PostgreSQL would not find a function taking a numeric).
MAX_BIGINT: Final = 2**63 - 1
