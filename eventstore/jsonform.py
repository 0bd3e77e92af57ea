"""The JSON form of a stored event: one encoding for every program that
hands events out as JSON (``eventstore read|tail --json``, the HTTP service).

Every :class:`~eventstore.events.StoredEvent` field, by name: ids as text,
times as RFC 3339 in UTC, the hashes as lowercase hex, ``data`` and
``metadata`` as stored. :func:`event_from_json` reads it back.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .errors import ValidationError
from .events import StoredEvent

__all__ = ["HASH_FIELDS", "encode_event", "event_from_json", "event_record"]

#: The fields that are bytes in a StoredEvent and hex text in its JSON form.
HASH_FIELDS: Final = ("prev_hash", "hash")

_encoder: Final = msgspec.json.Encoder()


def event_record(event: StoredEvent) -> dict[str, Any]:
    """``event`` as a dict of JSON types (str, int, dict, list, None)."""
    record: dict[str, Any] = msgspec.to_builtins(event)
    for name in HASH_FIELDS:
        value = getattr(event, name)
        record[name] = None if value is None else value.hex()
    return record


def encode_event(event: StoredEvent) -> bytes:
    """``event`` as one line of JSON (UTF-8, no newline)."""
    return _encoder.encode(event_record(event))


def event_from_json(data: bytes | str | dict[str, Any]) -> StoredEvent:
    """The StoredEvent of a JSON form (bytes, text, or a decoded dict);
    anything else is a :class:`ValidationError`."""
    try:
        decoded = msgspec.json.decode(data) if isinstance(data, bytes | str) else data
        if not isinstance(decoded, dict):
            raise TypeError(f"expected a JSON object, got {type(decoded).__name__}")
        record = dict(decoded)
        for name in HASH_FIELDS:
            if record.get(name) is not None:
                record[name] = bytes.fromhex(record[name])
        return msgspec.convert(record, StoredEvent)
    except (msgspec.MsgspecError, TypeError, ValueError) as exc:
        raise ValidationError(
            f"not the JSON form of a stored event: {exc}", operation="event_from_json"
        ) from exc
