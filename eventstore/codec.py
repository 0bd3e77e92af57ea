"""Validation and encoding of appends, before anything touches the database.

Everything invariant 7 of docs/design.md refuses is refused here, with a
:class:`ValidationError` that names the field, so a bad batch writes nothing.
The batch is encoded once, by msgspec, into the JSON array that
``utcp.append_events()`` takes as its one jsonb parameter.

The database checks the same rules again (with the limits of
eventstore/limits.py), derives the symbol and business time, and computes
the request fingerprint itself: this module only refuses early, with the
field named, and never sends what the database derives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from .errors import ValidationError
from .events import EventRegistry, NewEvent, uuid7
from .limits import (
    CONTROL_PATTERN,
    MAX_BATCH_BYTES,
    MAX_BIGINT,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_NUMBER_EXPONENT,
    MAX_TYPE_LENGTH,
    TIME_PATTERN,
    TYPE_PATTERN,
    time_problem,
)

__all__ = [
    "PreparedAppend",
    "check_identifier",
    "check_limit",
    "check_query_time",
    "check_stream_id",
    "check_value",
    "encoder",
    "error_path",
    "prepare_append",
]

#: Sorted keys: the same mapping always encodes to the same bytes. Decimals
#: travel as strings, exactly.
encoder: Final = msgspec.json.Encoder(decimal_format="string", order="sorted")

TYPE_NAME: Final = re.compile(TYPE_PATTERN)
_CONTROL: Final = re.compile(CONTROL_PATTERN)
_TIME: Final = re.compile(TIME_PATTERN)
_NUMBER_MAX: Final = Decimal(10) ** MAX_NUMBER_EXPONENT
_NUMBER_MIN: Final = Decimal(10) ** -MAX_NUMBER_EXPONENT


class _WireEvent(msgspec.Struct, omit_defaults=True):
    id: uuid.UUID
    type: str
    data: msgspec.Raw
    metadata: msgspec.Raw | None = None
    #: The caller chose the id: it is part of the request's fingerprint.
    id_given: bool = False


class PreparedAppend(msgspec.Struct, frozen=True):
    """A validated, encoded batch, ready for one call of utcp.append_events()."""

    payload: bytes  # JSON array for p_events
    event_ids: tuple[uuid.UUID, ...]
    caller_ids: bool = False  # some event id was chosen by the caller

    def contents(self) -> list[tuple[str, Any, Any]]:
        """(type, data, metadata) of each event, as they read back."""
        return [(e.type, e.data, e.metadata) for e in _wire_decoder.decode(self.payload)]


class _DecodedWire(msgspec.Struct):
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None


_wire_decoder: Final = msgspec.json.Decoder(list[_DecodedWire])


def _fail(message: str, field: str, **ctx: Any) -> ValidationError:
    ctx.setdefault("operation", "append")
    return ValidationError(message, field=field, **ctx)


def check_identifier(value: object, field: str, *, what: str, **ctx: Any) -> str:
    """Non-empty text, at most 200 characters, no control characters."""
    if not isinstance(value, str):
        raise _fail(f"{what} must be a string, got {type(value).__name__}", field, **ctx)
    # str.strip() removes every character of limits.BLANK_PATTERN (and more:
    # the rest are control characters, refused below anyway), so this also
    # refuses what the database calls blank (test_codec checks the subset).
    if not value.strip():
        raise _fail(f"{what} must not be empty", field, **ctx)
    if len(value) > MAX_ID_LENGTH:
        raise _fail(f"{what} is longer than {MAX_ID_LENGTH} characters", field, **ctx)
    if "\x00" in value or _CONTROL.search(value):
        raise _fail(
            f"{what} must not contain control, invisible or bidirectional formatting "
            "characters (NUL, C0 and C1 controls, zero-width and bidi controls)",
            field,
            **ctx,
        )
    if not value.isascii():
        if not _is_utf8(value):
            raise _fail(f"{what} is not valid Unicode (lone surrogate)", field, **ctx)
        # Two spellings of one name must not be two ids: only the composed
        # form (NFC) is accepted, so what looks the same is the same.
        if not unicodedata.is_normalized("NFC", value):
            raise _fail(
                f"{what} must be in Unicode normal form NFC "
                "(unicodedata.normalize('NFC', ...) gives it)",
                field,
                **ctx,
            )
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_stream_id(stream_id: object, operation: str = "append") -> str:
    return check_identifier(
        stream_id, "stream_id", what="stream id", stream_id=None, operation=operation
    )


#: Leaves that need no look at all.
_OPAQUE: Final = frozenset(
    {str, int, bool, type(None), dt.datetime, dt.date, dt.time, uuid.UUID, bytes}
)


def _finite_numbers(value: Any) -> bool:
    """False when ``value`` may hold a NaN or an infinity (or something this
    scan does not know); builds no field paths, unlike check_value."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _OPAQUE:
            continue
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is Decimal:
            if not item.is_finite():
                return False
        elif isinstance(item, msgspec.Struct):
            stack.extend(getattr(item, name) for name in item.__struct_fields__)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        else:
            return False
    return True


_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET: Final = re.compile(rb"[\[\]{}]")
_NUMBER: Final = re.compile(rb"-?[0-9][0-9.eE+-]*")
#: A number that may be out of range: an exponent, or 300 digits in a row
#: (also inside strings: then the exact check below finds nothing). Two
#: patterns: the counted one costs a few microseconds even on a short text,
#: and a text shorter than 300 bytes cannot hold 300 digits.
_EXPONENT_HINT: Final = re.compile(rb"[0-9][eE]")
_DIGITS_HINT: Final = re.compile(rb"[0-9]{%d}" % MAX_NUMBER_EXPONENT)


def _shape_problem(encoded: bytes) -> str | None:
    """Why the JSON text ``encoded`` nests too deeply or holds a number
    readers would not decode as written (eventstore/limits.py), or None.
    Cheap unless the text hints at either."""
    deep = encoded.count(b"{") + encoded.count(b"[") > MAX_DEPTH
    if (
        not deep
        and not _EXPONENT_HINT.search(encoded)
        and (len(encoded) < MAX_NUMBER_EXPONENT or not _DIGITS_HINT.search(encoded))
    ):
        return None
    bare = _STRING.sub(b'""', encoded)
    if deep:
        depth = 0
        for bracket in _BRACKET.findall(bare):
            depth += 1 if bracket in b"[{" else -1
            if depth > MAX_DEPTH:
                return f"is nested more than {MAX_DEPTH} levels deep"
    for token in _NUMBER.findall(bare):
        number = Decimal(token.decode()).copy_abs()  # exact: abs() rounds to 28 digits
        if number and not _NUMBER_MIN <= number < _NUMBER_MAX:
            return (
                f"holds the number {token.decode()[:40]}: non-zero numbers must be between "
                f"1e-{MAX_NUMBER_EXPONENT} and 1e{MAX_NUMBER_EXPONENT} in absolute value"
            )
    return None


def _encode_checked(value: Any, where: str, ctx: dict[str, Any]) -> bytes:
    """``value`` as JSON, refused as check_value refuses it, but fast.

    msgspec itself refuses lone surrogates, non-string keys (with sorted
    keys) and what it cannot encode; a NUL shows in its output as an
    escape, a NaN or infinity as null, a non-finite Decimal as a string.
    Only when the encoder failed or its output holds one of those hints does
    check_value walk the value, to name the exact field.
    """
    try:
        encoded = encoder.encode(value)
    except RecursionError:
        raise _fail(f"{where} is nested too deeply", where, **ctx) from None
    except (TypeError, UnicodeEncodeError, msgspec.EncodeError) as exc:
        check_value(value, where, ctx)
        raise _fail(f"cannot encode as JSON: {exc}", where, **ctx) from exc
    if (
        (b"null" in encoded or b'NaN"' in encoded or b'Infinity"' in encoded)
        and (not _finite_numbers(value))
    ) or b"\\u0000" in encoded:
        check_value(value, where, ctx)
    problem = _shape_problem(encoded)
    if problem is not None:
        raise _fail(f"{where} {problem}", where, **ctx)
    return encoded


def check_value(value: Any, path: str, ctx: dict[str, Any]) -> None:
    """Refuse what JSON or PostgreSQL cannot hold faithfully: NaN and
    infinities (msgspec would write null), NUL characters (jsonb refuses
    them), lone surrogates, non-string keys. ``path`` names ``value`` in
    errors ('' for a root whose fields are named bare)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise _fail(f"NUL character in {where}", where, **ctx)
            if not item.isascii() and not _is_utf8(item):
                raise _fail(f"{where} is not valid Unicode (lone surrogate)", where, **ctx)
        elif isinstance(item, bool | int | None):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _fail(f"{where} is {item!r}: only finite numbers are allowed", where, **ctx)
        elif isinstance(item, Decimal):
            if not item.is_finite():
                raise _fail(f"{where} is {item}: only finite numbers are allowed", where, **ctx)
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise _fail(f"{where} has a non-string key {key!r}", where, **ctx)
                if "\x00" in key:
                    raise _fail(f"NUL character in a key of {where}", where, **ctx)
                if not key.isascii() and not _is_utf8(key):
                    raise _fail(f"a key of {where} is not valid Unicode", where, **ctx)
                stack.append((sub, f"{where}.{key}" if where else key))
        elif isinstance(item, list | tuple):
            stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(item))
        elif isinstance(item, msgspec.Struct):
            for name in item.__struct_fields__:
                stack.append((getattr(item, name), f"{where}.{name}" if where else name))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            # msgspec encodes dataclasses too: a NaN in one would become null
            for f in dataclasses.fields(item):
                stack.append((getattr(item, f.name), f"{where}.{f.name}" if where else f.name))
        elif isinstance(item, dt.datetime | dt.date | dt.time | uuid.UUID | bytes):
            continue
        else:
            try:
                encoder.encode(item)
            except (TypeError, msgspec.EncodeError) as exc:
                raise _fail(f"{where}: {exc}", where, **ctx) from exc


def error_path(exc: msgspec.ValidationError) -> str:
    """The path of a msgspec validation error, '' for the top level:
    '.quantity' from "… - at `$.quantity`", from "Object missing required
    field `quantity`" or from a __post_init__ "`quantity` must be …"."""
    text = str(exc)
    path = ""
    if " - at `$" in text:
        text, _, at = text.rpartition(" - at `$")
        path = at.rstrip("`")
    missing = re.search(r"missing required field `([^`]+)`", text)
    named = missing or re.match(r"`(\w+)`", text)
    return f"{path}.{named.group(1)}" if named else path


def _check_time(value: Any, where: str, ctx: dict[str, Any]) -> None:
    """A business time: a timezone-aware datetime, or the same as text
    (limits.TIME_PATTERN: ISO 8601 with a zone), within limits."""
    if value is None:
        return
    if isinstance(value, str):
        try:
            if not _TIME.fullmatch(value):
                raise ValueError(value)
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise _fail(
                f"{where} is not an ISO 8601 timestamp with a zone "
                "(YYYY-MM-DDTHH:MM:SS[.ffffff] then Z or +HH:MM)",
                where,
                **ctx,
            ) from exc
    if not isinstance(value, dt.datetime):
        raise _fail(f"{where} must be a timestamp", where, **ctx)
    problem = time_problem(value)
    if problem is not None:
        raise _fail(f"{where} {problem}", where, **ctx)


def _payload(
    event: NewEvent, registry: EventRegistry, where: str, ctx: dict[str, Any], symbols: set[str]
) -> Any:
    """Validate one payload; return what to encode. The database derives the
    symbol (``data.symbol``) and the business time (the type's time field,
    else ``data.occurred_at``) from it: both are checked here as it will.
    ``symbols``: symbols already checked in this batch."""
    data = event.data
    schema = registry.get(event.type)
    if schema is not None:
        if isinstance(data, msgspec.Struct) and type(data) is not schema.struct:
            raise _fail(
                f"event type {event.type} takes {schema.struct.__name__}, "
                f"got {type(data).__name__}",
                f"{where}.data",
                **ctx,
            )
        if not isinstance(data, msgspec.Struct | Mapping):
            raise _fail("data must be a mapping or a msgspec Struct", f"{where}.data", **ctx)
        try:
            # Struct constructors do not check Meta constraints: a Struct is
            # validated through to_builtins → convert, like a mapping is.
            raw = msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else dict(data)
            unknown = sorted(k for k in raw if k not in schema.struct.__struct_fields__)
            if unknown:
                # msgspec would drop it silently: an audit log does not.
                raise _fail(
                    f"{event.type} has no field {unknown[0]!r} "
                    f"(its fields: {', '.join(schema.struct.__struct_fields__)})",
                    f"{where}.data.{unknown[0]}",
                    **ctx,
                )
            data = msgspec.convert(raw, schema.struct, strict=False)
        except msgspec.ValidationError as exc:
            raise _fail(
                f"{event.type} payload does not match its schema: {exc}",
                f"{where}.data{error_path(exc)}",
                **ctx,
            ) from exc
        symbol = getattr(data, schema.symbol_field) if schema.symbol_field else None
        when = getattr(data, schema.time_field) if schema.time_field else None
        time_field = schema.time_field or "occurred_at"
    elif isinstance(data, msgspec.Struct):
        owner = registry.for_struct(type(data))
        if owner is not None:
            raise _fail(
                f"{type(data).__name__} is the payload of {owner.name}, not {event.type}",
                f"{where}.type",
                **ctx,
            )
        symbol = getattr(data, "symbol", None)
        when = getattr(data, "occurred_at", None)
        time_field = "occurred_at"
    elif isinstance(data, Mapping):
        symbol = data.get("symbol")
        when = data.get("occurred_at")
        time_field = "occurred_at"
    else:
        raise _fail("data must be a mapping or a msgspec Struct", f"{where}.data", **ctx)
    if symbol is not None and not (type(symbol) is str and symbol in symbols):
        symbol = check_identifier(symbol, f"{where}.data.symbol", what="symbol", **ctx)
        symbols.add(symbol)
    _check_time(when, f"{where}.data.{time_field}", ctx)
    return data


def _check_time_field(
    type_name: str,
    registry: EventRegistry,
    time_fields: Mapping[str, str],
    where: str,
    ctx: dict[str, Any],
) -> None:
    schema = registry.get(type_name)
    if schema is None or schema.time_field is None:
        return
    known = time_fields.get(type_name, "occurred_at")
    if schema.time_field != known:
        raise _fail(
            f"{type_name} is registered with business time {schema.time_field!r}, but the "
            f"database takes {known!r} for it: the schema's owner adds "
            f"({type_name!r}, {schema.time_field!r}) to utcp.event_time_fields "
            "(a Sqitch change) before such events are appended",
            where,
            **ctx,
        )


def prepare_append(
    stream_id: str,
    events: Sequence[NewEvent],
    *,
    registry: EventRegistry,
    idempotency_key: str | None,
    max_event_bytes: int,
    max_batch_events: int,
    time_fields: Mapping[str, str] | None = None,
) -> PreparedAppend:
    """Validate and encode a whole batch; raise before anything is written.

    ``time_fields``: the business-time field of each type as the database
    derives it (utcp.event_time_fields; other types: ``occurred_at``). A
    registered type that names another time field is refused: the database
    would index its events at another time than the one validated here."""
    ctx: dict[str, Any] = {"stream_id": stream_id, "idempotency_key": idempotency_key}
    check_identifier(stream_id, "stream_id", what="stream id", **ctx)
    if idempotency_key is not None:
        check_identifier(idempotency_key, "idempotency_key", what="idempotency key", **ctx)
    if isinstance(events, NewEvent) or not isinstance(events, Sequence):
        raise _fail("events must be a sequence of NewEvent", "events", **ctx)
    if not events:
        raise _fail("an append needs at least one event", "events", **ctx)
    if len(events) > max_batch_events:
        raise _fail(
            f"{len(events)} events in one append; the limit is {max_batch_events}", "events", **ctx
        )

    wire: list[_WireEvent] = []
    ids: list[uuid.UUID] = []
    total = 0
    seen: set[uuid.UUID] = set()
    # A batch mostly repeats its types and symbols: each is checked once.
    types: set[str] = set()
    symbols: set[str] = set()
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, NewEvent):
            raise _fail("each event must be a NewEvent", where, **ctx)
        if not (type(event.type) is str and event.type in types):
            if (
                not isinstance(event.type, str)
                or len(event.type) > MAX_TYPE_LENGTH
                or not TYPE_NAME.fullmatch(event.type)
            ):
                raise _fail(
                    f"malformed event type {event.type!r}: a letter, then up to 127 letters, "
                    "digits or _ . : -",
                    f"{where}.type",
                    **ctx,
                )
            if time_fields is not None:
                _check_time_field(event.type, registry, time_fields, f"{where}.type", ctx)
            types.add(event.type)
        try:
            data = _payload(event, registry, where, ctx, symbols)
        except RecursionError:
            raise _fail(f"{where}.data is nested too deeply", f"{where}.data", **ctx) from None
        data_json = _encode_checked(data, f"{where}.data", ctx)
        meta_json = None
        if event.metadata is not None:
            if not isinstance(event.metadata, Mapping):
                raise _fail("metadata must be a mapping", f"{where}.metadata", **ctx)
            meta_json = _encode_checked(event.metadata, f"{where}.metadata", ctx)
        if not data_json.startswith(b"{"):
            raise _fail("data must encode to a JSON object", f"{where}.data", **ctx)
        size = len(data_json) + (len(meta_json) if meta_json else 0)
        if size > max_event_bytes:
            bigger = "metadata" if meta_json and len(meta_json) > len(data_json) else "data"
            raise _fail(
                f"event is {size} bytes encoded; the limit is {max_event_bytes}",
                f"{where}.{bigger}",
                **ctx,
            )
        total += size
        if total > MAX_BATCH_BYTES:
            raise _fail(
                f"the batch is more than {MAX_BATCH_BYTES} bytes encoded", f"{where}", **ctx
            )
        if event.event_id is None:
            event_id = uuid7()
        elif isinstance(event.event_id, uuid.UUID):
            event_id = event.event_id
        else:
            raise _fail("event_id must be a UUID", f"{where}.event_id", **ctx)
        if event_id in seen:
            raise _fail(
                f"event id {event_id} appears twice in the batch", f"{where}.event_id", **ctx
            )
        seen.add(event_id)
        ids.append(event_id)
        wire.append(
            _WireEvent(
                id=event_id,
                type=event.type,
                data=msgspec.Raw(data_json),
                metadata=None if meta_json is None else msgspec.Raw(meta_json),
                # The request, not its accidents: the database fingerprints
                # caller-given ids, not generated ones (a retry makes new ones).
                id_given=event.event_id is not None,
            )
        )
    return PreparedAppend(
        payload=encoder.encode(wire),
        event_ids=tuple(ids),
        caller_ids=any(event.event_id is not None for event in events),
    )


def check_limit(limit: object, operation: str, *, allow_none: bool = False) -> None:
    if limit is None and allow_none:
        return
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BIGINT:
        raise ValidationError(
            f"limit must be an int from 1 to {MAX_BIGINT}", field="limit", operation=operation
        )


def check_query_time(value: object, field: str, operation: str) -> dt.datetime | None:
    """A bound of a query over business time: None, or a timezone-aware
    datetime (a naive one would be read in the server's time zone)."""
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{field} must be a timezone-aware datetime, got {value!r}",
            field=field,
            operation=operation,
        )
    return value
