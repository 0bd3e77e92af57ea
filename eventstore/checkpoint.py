"""The global log's checkpoint and the readers' horizon: the one home of
the rule "no reader ever misses an event" (docs/architecture.md, "Global
order").

* A checkpoint names one event of the global log by ``(tx_id, position)``
  and is written ``"<tx_id>/<position>"``; checkpoints order like the log
  (by transaction id, then position). :class:`Checkpoint` parses, formats
  and orders them; every reader (``read_all``, the projections) uses it.
* The horizon: a reader only reads rows whose transaction is older than
  every transaction still running (``tx_id < pg_snapshot_xmin(...)``), so no
  row can later appear behind a checkpoint already handed out.
  :data:`HORIZON_SQL`, :func:`visible_sql` and :func:`checkpoint_sql` are
  the SQL fragments every query that needs them is composed from.
"""

from __future__ import annotations

from typing import ClassVar, Final

import msgspec

from .errors import CheckpointNotInLog, ValidationError
from .limits import MAX_BIGINT

__all__ = [
    "HORIZON_SQL",
    "Checkpoint",
    "checkpoint_not_in_log",
    "checkpoint_sql",
    "visible_sql",
]

#: Transaction ids are xid8: below 2**64.
MAX_TX_ID: Final = 2**64 - 1

#: The readers' horizon: the oldest transaction still running anywhere in
#: the cluster. Rows of transactions before it can no longer be joined by
#: a row that sorts earlier.
HORIZON_SQL: Final = "pg_snapshot_xmin(pg_current_snapshot())"


def visible_sql(tx_id: str = "tx_id") -> str:
    """The predicate "this row is inside the readers' horizon", for the
    xid8 expression ``tx_id`` (a column, ``e.tx_id``, or a parameter)."""
    return f"{tx_id} < {HORIZON_SQL}"


def checkpoint_sql(tx_id: str = "tx_id", position: str = "position") -> str:
    """The text form of a checkpoint (``"<tx_id>/<position>"``) in SQL."""
    return f"{tx_id}::text || '/' || {position}::text"


class Checkpoint(msgspec.Struct, frozen=True, order=True):
    """A place in the global log: just after the event at ``(tx, position)``.

    ``Checkpoint.parse("123/45")``; ``str(checkpoint)`` gives that text back;
    checkpoints compare in log order. ``Checkpoint.START`` ("0/0") is before
    the first event.
    """

    tx: int
    position: int

    START: ClassVar[Checkpoint]

    @classmethod
    def parse(
        cls, text: str | None, *, field: str = "after", operation: str = "read_all"
    ) -> Checkpoint:
        """``text`` as a checkpoint (None: :attr:`START`); a ValidationError
        naming ``field`` when it is not one."""
        if text is None:
            return cls.START
        if isinstance(text, str):
            tx, sep, pos = text.partition("/")
            # ASCII digits only ('²'.isdigit() is true), within xid8 and
            # bigint; decimal, as written (xid8 input reads a leading 0 as octal).
            if (
                sep
                and tx.isascii()
                and tx.isdigit()
                and pos.isascii()
                and pos.isdigit()
                and int(tx) <= MAX_TX_ID
                and int(pos) <= MAX_BIGINT
            ):
                return cls(int(tx), int(pos))
        raise ValidationError(
            f"malformed checkpoint {text!r}: pass a StoredEvent.checkpoint",
            field=field,
            operation=operation,
        )

    def __str__(self) -> str:
        return f"{self.tx}/{self.position}"

    @property
    def is_start(self) -> bool:
        return self.tx == 0 and self.position == 0

    @property
    def tx_param(self) -> str:
        """The transaction id as a query parameter for ``%s::xid8`` (text:
        it may not fit a bigint)."""
        return str(self.tx)


Checkpoint.START = Checkpoint(0, 0)


def checkpoint_not_in_log(checkpoint: str) -> CheckpointNotInLog:
    return CheckpointNotInLog(
        f"checkpoint {checkpoint} names no event in this log: the log was restored to a "
        "point before it (a point-in-time recovery, an older backup or dump), so what the "
        "reader saw after the restore point is gone and paging on would miss events. "
        "Rebuild a projection from the log with `eventstore project rebuild`; start another "
        "reader again from the start or from a checkpoint that is in this log "
        "(docs/runbook.md, 'Restores')",
        checkpoint=checkpoint,
        operation="read_all",
    )
