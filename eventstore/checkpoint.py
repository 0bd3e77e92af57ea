"""The global log's checkpoint: its text form ``"<tx_id>/<position>"``,
parsing and the error for one that names no event (docs/architecture.md,
"Global order")."""

from __future__ import annotations

from typing import Final

from .errors import CheckpointNotInLog, ValidationError
from .limits import MAX_BIGINT

__all__ = ["START", "checkpoint_not_in_log", "format_checkpoint", "parse_checkpoint"]

#: Before the first event.
START: Final = ("0", 0)


def format_checkpoint(tx_id: int | str, position: int) -> str:
    """The checkpoint of the event at ``(tx_id, position)``."""
    return f"{tx_id}/{position}"


def parse_checkpoint(after: str | None) -> tuple[str, int]:
    if after is None:
        return START
    if isinstance(after, str):
        tx, sep, pos = after.partition("/")
        # ASCII digits only ('²'.isdigit() is true), within xid8 and bigint.
        if (
            sep
            and tx.isascii()
            and tx.isdigit()
            and pos.isascii()
            and pos.isdigit()
            and int(tx) < 2**64
            and int(pos) <= MAX_BIGINT
        ):
            # Decimal, as written: xid8 input would read a leading 0 as octal.
            return str(int(tx)), int(pos)
    raise ValidationError(
        f"malformed checkpoint {after!r}: pass a StoredEvent.checkpoint",
        field="after",
        operation="read_all",
    )


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
