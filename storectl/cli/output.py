"""How every command prints: one form for counts, seconds, times and
decimals, JSON lines for ``--json``, and nothing a terminal would obey."""

from __future__ import annotations

import datetime as dt
import sys
from decimal import Decimal
from typing import Any, Final, TextIO

import msgspec

from eventstore import StoredEvent
from eventstore.jsonform import encode_event

__all__ = [
    "LINE_WIDTH",
    "cell",
    "count",
    "decimal_text",
    "emit",
    "event_json",
    "event_line",
    "json_line",
    "jsonable",
    "number",
    "printable",
    "say",
    "seconds",
    "time_text",
]

#: Human output: one line per event, cut to this width.
LINE_WIDTH: Final = 160

#: Characters a terminal acts on rather than shows (C1 controls such as NEL
#: and CSI, bidirectional overrides and isolates, line and paragraph
#: separators): what the log holds is shown, never obeyed. JSON output
#: escapes them as \uXXXX too, which is still the same JSON string.
_TERMINAL_CONTROLS: Final = {
    code: f"\\u{code:04x}"
    for code in (
        *range(0x80, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0x2028,
        0x2029,
    )
}

#: Payloads shown to people: compact, keys in alphabetical order.
_compact: Final = msgspec.json.Encoder(order="sorted")
_json: Final = msgspec.json.Encoder()


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (C0 and C1
    controls, bidirectional controls, separators) written as an escape."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else f"\\u{ord(ch):04x}" for ch in text
    ).translate(_TERMINAL_CONTROLS)


# -- numbers and times ----------------------------------------------------------


def number(value: int) -> str:
    """An integer count, grouped: ``12,345``."""
    return f"{value:,}"


def count(value: int, noun: str, plural: str | None = None) -> str:
    """``1 event``, ``12,345 events``: the noun agrees with the number."""
    word = noun if value == 1 else (plural or f"{noun}s")
    return f"{number(value)} {word}"


def seconds(value: float) -> str:
    """A duration: ``4.2 s``."""
    return f"{value:.1f} s"


def decimal_text(value: Decimal) -> str:
    """A decimal as plain digits, without exponent or trailing zeros:
    ``0E-12`` is ``0``, ``230.500000000000`` is ``230.5``."""
    if not value.is_finite():
        return str(value)
    if value.is_zero():
        return "0"
    # Not Decimal.normalize(): it rounds to the context's precision.
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    while exponent < 0 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    return format(Decimal((sign, digits, exponent)), "f")


def time_text(value: dt.datetime) -> str:
    """A time in UTC, to the millisecond when it has a fraction: ``…T13:40:27.088Z``."""
    utc = value.astimezone(dt.UTC)
    text = utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def cell(value: Any) -> str:
    """One value of a read-model row, for people."""
    if value is None:
        return "null"
    if isinstance(value, dt.datetime):
        return time_text(value)
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def jsonable(value: Any) -> Any:
    """``value`` (Structs, dicts, lists, decimals, …) as JSON types, with
    every decimal written the way :func:`decimal_text` writes it."""
    return _normalise(msgspec.to_builtins(value, builtin_types=(Decimal,)))


def _normalise(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


# -- writing ----------------------------------------------------------------------


def say(text: str, out: TextIO | None = None) -> None:
    """One line (or several) for people, on stdout unless ``out``."""
    print(text, file=out if out is not None else sys.stdout)


def json_line(record: Any) -> str:
    """``record`` (anything :func:`jsonable` takes) as one line of JSON,
    without the newline; nothing in it a terminal would obey."""
    return _json.encode(jsonable(record)).decode().translate(_TERMINAL_CONTROLS)


def emit(record: Any, out: TextIO | None = None) -> None:
    """One JSON line on stdout (or ``out``)."""
    where = out if out is not None else sys.stdout
    where.write(json_line(record) + "\n")


def event_line(event: StoredEvent) -> str:
    """``position  stream vN  Type  time  {data}``, at most LINE_WIDTH wide."""
    data = _compact.encode(event.data).decode()
    line = printable(
        f"{event.position:>6}  {event.stream_id} v{event.stream_version}  {event.type}  "
        f"{time_text(event.occurred_at)}  {data}"
    )
    if len(line) > LINE_WIDTH:
        line = line[: LINE_WIDTH - 1] + "…"
    return line


def event_json(event: StoredEvent) -> str:
    """The event's JSON form (eventstore.jsonform) as one line."""
    return encode_event(event).decode().translate(_TERMINAL_CONTROLS)
