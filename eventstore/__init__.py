"""The trading assistant's audit store: an append-only, tamper-evident
event log on PostgreSQL.

    from eventstore import EventStore, NewEvent
    with EventStore.open("postgresql://…/utcp") as store:
        store.append("portfolio-42", [NewEvent("CashDeposited", {"amount": "100"})])
"""

from .chain import Anchor, ChainReport
from .errors import (
    AppendOutcomeUnknown,
    CheckpointNotInLog,
    DuplicateEventId,
    EventStoreError,
    IdempotencyConflict,
    IntegrityViolation,
    LogOrderHazard,
    SchemaNotDeployed,
    SqitchError,
    StorageError,
    StorageUnavailable,
    ValidationError,
    WrongExpectedVersion,
)
from .events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventRegistry,
    NewEvent,
    RawStoredEvent,
    StoredEvent,
)
from .health import StoreStatus
from .settings import Settings
from .store import EventStore

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Anchor",
    "AppendOutcomeUnknown",
    "AppendResult",
    "ChainReport",
    "CheckpointNotInLog",
    "DuplicateEventId",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "IdempotencyConflict",
    "IntegrityViolation",
    "LogOrderHazard",
    "NewEvent",
    "RawStoredEvent",
    "SchemaNotDeployed",
    "Settings",
    "SqitchError",
    "StorageError",
    "StorageUnavailable",
    "StoreStatus",
    "StoredEvent",
    "ValidationError",
    "WrongExpectedVersion",
]
