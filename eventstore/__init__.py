"""The trading assistant's audit store: an append-only, tamper-evident
event log on PostgreSQL.

    from eventstore import EventStore, NewEvent
    with EventStore.open("postgresql://…/utcp") as store:
        store.append("portfolio-42", [NewEvent("CashDeposited", {"amount": "100"})])
"""

from .chain import Anchor, ChainReport
from .checkpoint import HORIZON_SQL, Checkpoint, checkpoint_sql, visible_sql
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
)
from .health import StoreStatus
from .paging import Page
from .settings import Settings, SettingsWarning
from .store import EventStore

__all__ = [
    "ANY",
    "HORIZON_SQL",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Anchor",
    "AppendOutcomeUnknown",
    "AppendResult",
    "ChainReport",
    "Checkpoint",
    "CheckpointNotInLog",
    "DuplicateEventId",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "IdempotencyConflict",
    "IntegrityViolation",
    "LogOrderHazard",
    "NewEvent",
    "Page",
    "SchemaNotDeployed",
    "Settings",
    "SettingsWarning",
    "SqitchError",
    "StorageError",
    "StorageUnavailable",
    "StoreStatus",
    "StoredEvent",
    "ValidationError",
    "WrongExpectedVersion",
    "checkpoint_sql",
    "visible_sql",
]
