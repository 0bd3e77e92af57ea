"""The trading assistant's audit store: an append-only, tamper-evident
event log on PostgreSQL.

    from eventstore import EventStore, NewEvent
    with EventStore.open("postgresql://…/utcp") as store:
        store.append("portfolio-42", [NewEvent("CashDeposited", {"amount": "100"})])
"""

from .adapter import StorageAdapter
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
    StoredEvent,
    default_registry,
)
from .schemas import AuditEvent, Trade
from .settings import Settings
from .store import Anchor, ChainReport, EventStore, StoreStatus

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Anchor",
    "AppendOutcomeUnknown",
    "AppendResult",
    "AuditEvent",
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
    "SchemaNotDeployed",
    "Settings",
    "SqitchError",
    "StorageAdapter",
    "StorageError",
    "StorageUnavailable",
    "StoreStatus",
    "StoredEvent",
    "Trade",
    "ValidationError",
    "WrongExpectedVersion",
    "default_registry",
]
