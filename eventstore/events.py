"""What goes into the log and what comes out of it.

:class:`NewEvent` is what a caller appends; :class:`StoredEvent` is the
envelope the store adds (position, version, checkpoint, hash);
:class:`AppendResult` tells what an append wrote. The event-type registry
maps a type name to the msgspec Struct that validates its payload.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "EventRegistry",
    "EventSchema",
    "ExpectedVersion",
    "NewEvent",
    "RawStoredEvent",
    "StoredEvent",
    "uuid7",
]


class _Expectation:
    """A symbolic expected version (ANY, NO_STREAM, STREAM_EXISTS)."""

    __slots__ = ("_name", "sql_value")

    def __init__(self, name: str, sql_value: int | None) -> None:
        self._name = name
        #: what utcp.append_events() takes as p_expected
        self.sql_value = sql_value

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


#: Append whatever version the stream is at.
ANY: Final = _Expectation("ANY", None)
#: The stream must not exist yet (the same as expected_version=0).
NO_STREAM: Final = _Expectation("NO_STREAM", 0)
#: The stream must exist, at any version.
STREAM_EXISTS: Final = _Expectation("STREAM_EXISTS", -1)

ExpectedVersion = int | _Expectation


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append.

    ``data`` is a mapping or a msgspec Struct (a JSON object once encoded);
    ``metadata`` an optional mapping (correlation ids, actor, …);
    ``event_id`` is generated when not given.
    """

    type: str
    data: Any
    metadata: Mapping[str, Any] | None = None
    event_id: uuid.UUID | None = None


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as stored in the log.

    ``checkpoint`` is opaque: ``read_all(after=event.checkpoint)`` returns
    what follows this event in the global order.
    """

    position: int
    checkpoint: str
    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] | None
    symbol: str | None
    occurred_at: dt.datetime
    created_at: dt.datetime
    prev_hash: bytes | None
    hash: bytes


class RawStoredEvent(msgspec.Struct, frozen=True):
    """A stored event whose payload and metadata are their JSON text, as
    the database sends it (``read_all(raw=True)``, ``read_stream(raw=True)``):
    for consumers that forward, export or decode lazily, for instance
    straight into a payload Struct (:meth:`EventRegistry.decode_raw`).

    ``data`` is the JSON of the stored ``jsonb``: PostgreSQL's own rendering
    (keys in jsonb's order, one space after ``:`` and ``,``), not the bytes
    the writer sent; it decodes to the same value.
    """

    position: int
    checkpoint: str
    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    type: str
    data: bytes
    metadata: bytes | None
    symbol: str | None
    occurred_at: dt.datetime
    created_at: dt.datetime
    prev_hash: bytes | None
    hash: bytes


class AppendResult(msgspec.Struct, frozen=True):
    """What one append wrote (or, with ``duplicate=True``, had written before)."""

    stream_id: str
    first_version: int
    last_version: int
    positions: tuple[int, ...]
    duplicate: bool = False


class EventSchema(msgspec.Struct, frozen=True):
    """A registered event type: the Struct that validates its payload, and
    which of its fields the store indexes as symbol and business time."""

    name: str
    struct: type[msgspec.Struct]
    symbol_field: str | None = "symbol"
    time_field: str | None = None


class EventRegistry:
    """Event type name → payload schema. Appends of a registered type are
    validated against its Struct; other types need only be JSON objects."""

    def __init__(self) -> None:
        self._by_name: dict[str, EventSchema] = {}
        self._by_struct: dict[type[msgspec.Struct], EventSchema] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}

    def register(
        self,
        name: str,
        struct: type[msgspec.Struct],
        *,
        symbol_field: str | None = "symbol",
        time_field: str | None = None,
    ) -> EventSchema:
        fields = set(struct.__struct_fields__)
        if time_field is not None and time_field not in fields:
            raise ValueError(f"{struct.__name__} has no field {time_field!r} (time_field)")
        if symbol_field not in fields:
            symbol_field = None
        schema = EventSchema(name, struct, symbol_field, time_field)
        existing = self._by_name.get(name)
        if existing is not None and existing.struct is not struct:
            raise ValueError(f"event type {name!r} is already registered to {existing.struct}")
        self._by_name[name] = schema
        self._by_struct[struct] = schema
        self._decoders[name] = payload_decoder(struct)
        return schema

    def get(self, name: str) -> EventSchema | None:
        return self._by_name.get(name)

    def for_struct(self, struct: type[msgspec.Struct]) -> EventSchema | None:
        return self._by_struct.get(struct)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def decode(self, event: StoredEvent) -> Any:
        """The payload of a stored event as its registered Struct (or the dict)."""
        schema = self._by_name.get(event.type)
        if schema is None:
            return event.data
        return msgspec.convert(event.data, schema.struct, strict=False)

    def decode_raw(self, event: RawStoredEvent) -> Any:
        """The payload of a raw stored event, decoded from its JSON straight
        into its registered Struct (no dict in between), or into a dict
        when the type is not registered. Raises msgspec.ValidationError /
        msgspec.DecodeError when the payload does not fit the Struct."""
        decoder = self._decoders.get(event.type)
        if decoder is None:
            return _dict_decoder.decode(event.data)
        return decoder.decode(event.data)


def payload_decoder(struct: type[S]) -> msgspec.json.Decoder[S]:
    """A JSON decoder into ``struct`` that accepts what
    ``msgspec.convert(data, struct, strict=False)`` accepts from the same
    payload decoded into a dict (decimals and times as strings)."""
    return msgspec.json.Decoder(struct, strict=False)


_dict_decoder: Final = msgspec.json.Decoder(dict[str, Any])


_last_ms = 0
_seq = 0


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7).

    New ids land at the right edge of the event_id index instead of at a
    random page, which keeps inserts cheap as the log grows. Ids made in the
    same millisecond by this process are strictly increasing.
    """
    global _last_ms, _seq  # noqa: PLW0603
    ms = time.time_ns() // 1_000_000
    noise = int.from_bytes(os.urandom(10), "big")  # one system call
    if ms <= _last_ms:
        ms = _last_ms
        _seq += 1
        if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            ms += 1
            _seq = 0
    else:
        _seq = (noise >> 64) & 0x3FF
    _last_ms = ms
    rand = noise & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | _seq << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)
