"""The trading assistant's audit store: an append-only, tamper-evident
event log on PostgreSQL.

    from eventstore import EventStore, NewEvent
    with EventStore.open("postgresql://…/utcp") as store:
        store.append("portfolio-42", [NewEvent("NoteAdded", {"text": "hello"})])

Everything a caller needs is exported here, with the package as its module
(``eventstore.StoredEvent``, not ``eventstore.events.StoredEvent``); the
modules behind it are the implementation. Two submodules are public too:
:mod:`eventstore.sqitch` (deploy the schema) and :mod:`eventstore.watchdog`
(client-side deadlines, for code that holds connections of its own next to
the store, like the projection worker). docs/architecture.md describes the
layers and the one extension point for read models, :meth:`EventStore.query`.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from . import sqitch, watchdog
from .chain import DEFAULT_ANCHOR_LOCK_TIMEOUT, Anchor, AnchorProblem, ChainProblem, ChainReport
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
    EventSchema,
    ExpectedVersion,
    NewEvent,
    RawStoredEvent,
    StoredEvent,
    payload_decoder,
)
from .health import StoreStatus
from .paging import Page
from .public import present_as_package
from .settings import Settings, SettingsWarning
from .store import EventStore

#: The distribution's name on an index (pyproject.toml).
DISTRIBUTION = "utcp-eventstore"

try:
    #: The version of the installed distribution (pyproject.toml is its one source).
    __version__ = _distribution_version(DISTRIBUTION)
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ANY",
    "DEFAULT_ANCHOR_LOCK_TIMEOUT",
    "HORIZON_SQL",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Anchor",
    "AnchorProblem",
    "AppendOutcomeUnknown",
    "AppendResult",
    "ChainProblem",
    "ChainReport",
    "Checkpoint",
    "CheckpointNotInLog",
    "DuplicateEventId",
    "EventRegistry",
    "EventSchema",
    "EventStore",
    "EventStoreError",
    "ExpectedVersion",
    "IdempotencyConflict",
    "IntegrityViolation",
    "LogOrderHazard",
    "NewEvent",
    "Page",
    "RawStoredEvent",
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
    "__version__",
    "checkpoint_sql",
    "payload_decoder",
    "present_as_package",
    "sqitch",
    "visible_sql",
    "watchdog",
]

present_as_package(__name__, globals())
