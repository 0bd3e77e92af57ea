"""A writer whose ``append`` is the service's ``store.append`` tool over
loopback HTTP, for the log's contract suite (tests/contract).

:func:`http_writer` starts the service in this process (no keys, loopback
only) on a store opened with the contract's settings, and yields an
:class:`HttpWriter`: its ``append`` posts to ``/tools/store.append`` with
httpx and maps the service's answers back to the library's results and
errors, as a client of the service would see them:

* 200 -> :class:`AppendResult` (the tool's output holds every field);
* 400 -> :class:`ValidationError`, its ``field`` read from the one-line
  message (the library's error context ``"(field='events[1].event_id', ..."``,
  its ``"events[3].data.n: ..."``, or msgspec's ``"... at `$.expected_version`"``);
* 409 -> :class:`WrongExpectedVersion` (``actual`` read from the message),
  :class:`IdempotencyConflict` or :class:`DuplicateEventId`, told apart by
  their messages: the answer has no machine-readable kind;
* 503/504 whose message says the write may or may not have happened ->
  :class:`AppendOutcomeUnknown` (``event_ids``: the caller's, when it gave
  them all); any other 503 -> :class:`StorageUnavailable`.

Without an idempotency key the tool derives one from the request (an
identical repeat is recorded once: storectl/service/tools.py, AppendInput); the library writes every
keyless call. To keep the library's semantics the client gives each event
of a keyless call a fresh id, unless the caller gave one (then an identical
keyless repeat is a duplicate over HTTP, where the library refuses it).

The mapping is test support, not library code: it lives here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec

from eventstore import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, EventStore, NewEvent, Settings
from eventstore.errors import (
    AppendOutcomeUnknown,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from eventstore.events import ExpectedVersion
from storectl.service import ServiceSettings, build_app
from storectl.service.server import running
from trading import trading_registry

__all__ = ["HttpWriter", "http_writer"]

TOOL: Final = "store.append"
#: Payloads as the library encodes them: decimals as exact strings.
_encode = msgspec.json.Encoder(decimal_format="string").encode

_SENTINELS: Final[dict[int, str]] = {
    id(ANY): "any",
    id(NO_STREAM): "no_stream",
    id(STREAM_EXISTS): "stream_exists",
}
#: The input's fields, the roots of the paths a 400 names.
_INPUT_FIELDS: Final = frozenset({"stream", "events", "expected_version", "idempotency_key"})
_CONTEXT_FIELD: Final = re.compile(r"\(field='([^']+)'")
_MSGSPEC_PATH: Final = re.compile(r"at `\$\.([^`]+)`")
_FIELD_PATH: Final = re.compile(r"^([a-z_]+(?:\[\d+\])*(?:\.[A-Za-z_][\w]*(?:\[\d+\])*)*):? ")
_SQLSTATE: Final = re.compile(r"sqlstate='([0-9A-Z]{5})'")
_ACTUAL: Final = re.compile(r"is at version (-?\d+|None)")


class _AppendOutput(msgspec.Struct):
    stream: str
    first_version: int
    last_version: int
    positions: list[int]
    duplicate: bool


class _Error(msgspec.Struct):
    error: str


def _expected_json(expected: ExpectedVersion) -> Any:
    """The tool's encoding of an expected version; anything else is sent
    as it is, for the service to refuse."""
    return _SENTINELS.get(id(expected), expected)


def _event_json(event: NewEvent, event_id: uuid.UUID | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.type, "data": event.data}
    if event.metadata is not None:
        out["metadata"] = event.metadata
    if event_id is not None:
        out["event_id"] = event_id
    return out


def _field(message: str) -> str | None:
    """The input field a 400's message names, if any."""
    found = _CONTEXT_FIELD.search(message) or _MSGSPEC_PATH.search(message)
    if found:
        return found.group(1)
    text = message.removeprefix(f"{TOOL}: ")
    found = _FIELD_PATH.match(text)
    if found and re.split(r"[.\[]", found.group(1))[0] in _INPUT_FIELDS:
        return found.group(1)
    return None


def _known(ids: Sequence[uuid.UUID | None]) -> tuple[uuid.UUID, ...]:
    """The batch's event ids when the client knows them all (it sent them)."""
    return tuple(i for i in ids if i is not None) if all(i is not None for i in ids) else ()


@dataclass(frozen=True)
class HttpWriter:
    """``append`` over HTTP; ``store`` reads back on the same database."""

    store: EventStore
    client: httpx.Client

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        # Without a key the tool derives one from the request, so that an
        # identical repeat is recorded once; the library writes every call
        # without a key: fresh event ids make each call a request of its own.
        ids = [
            e.event_id if e.event_id is not None or idempotency_key is not None else uuid.uuid4()
            for e in events
        ]
        body: dict[str, Any] = {
            "stream": stream_id,
            "events": [_event_json(e, i) for e, i in zip(events, ids, strict=True)],
            "expected_version": _expected_json(expected_version),
        }
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        try:
            payload = _encode(body)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValidationError(
                f"cannot encode the request as JSON: {exc}", operation=TOOL, stream_id=stream_id
            ) from exc
        try:
            response = self.client.post(
                f"/tools/{TOOL}", content=payload, headers={"content-type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise AppendOutcomeUnknown(
                f"{TOOL}: no answer from the service ({exc!r}): the append may or may not "
                "have been written",
                event_ids=_known(ids),
                operation=TOOL,
                stream_id=stream_id,
                idempotency_key=idempotency_key,
            ) from exc
        if response.status_code == 200:
            out = msgspec.json.decode(response.content, type=_AppendOutput)
            return AppendResult(
                out.stream, out.first_version, out.last_version, tuple(out.positions), out.duplicate
            )
        raise _error(response, stream_id, ids, expected_version, idempotency_key)


def _error(
    response: httpx.Response,
    stream_id: str,
    ids: Sequence[uuid.UUID | None],
    expected: ExpectedVersion,
    key: str | None,
) -> EventStoreError:
    status = response.status_code
    try:
        message = msgspec.json.decode(response.content, type=_Error).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = response.text.strip()
    sqlstate = _SQLSTATE.search(message)
    ctx: dict[str, Any] = {
        "operation": TOOL,
        "stream_id": stream_id,
        "idempotency_key": key,
        "sqlstate": sqlstate.group(1) if sqlstate else None,
    }
    if status == 400:
        return ValidationError(message, field=_field(message), **ctx)
    if status == 409:
        if "already used for a different request" in message:
            return IdempotencyConflict(message, **ctx)
        if "event id" in message:
            return DuplicateEventId(message, **ctx)
        found = _ACTUAL.search(message)
        if found:
            actual = None if found.group(1) == "None" else int(found.group(1))
            return WrongExpectedVersion(message, expected=expected, actual=actual, **ctx)
    if status in (503, 504) and ("may or may not" in message or "may still complete" in message):
        return AppendOutcomeUnknown(message, event_ids=_known(ids), **ctx)
    if status == 503:
        return StorageUnavailable(message, **ctx)
    return EventStoreError(f"HTTP {status}: {message}", **ctx)


@contextmanager
def http_writer(dsn: str, settings: Settings) -> Iterator[HttpWriter]:
    """The service on a free loopback port, without keys, on a store opened
    on ``dsn`` with ``settings`` (its sessions carry their
    ``application_name``); the writer's ``store`` is that same store."""
    service = ServiceSettings(
        dsn=dsn,
        host="127.0.0.1",
        no_auth=True,
        pool_size=settings.pool_max_size,
        request_timeout=max(30.0, settings.retry_timeout * 2),
    )
    with (
        EventStore.open(dsn, settings, registry=trading_registry()) as store,
        running(build_app(service, store=store), service) as url,
        httpx.Client(base_url=url, timeout=120.0) as client,
    ):
        yield HttpWriter(store, client)
