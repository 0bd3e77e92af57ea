"""The log's tamper evidence inside the database: every stream's hash chain
recomputed (``verify_chain``) and anchors, digests of the global log to
publish outside it (docs/security.md)."""

from __future__ import annotations

import datetime as dt
from typing import Final

import msgspec

from . import sql
from .codec import check_limit, check_stream_id
from .connection import Database
from .errors import StorageError, ValidationError, first_line

__all__ = ["Anchor", "AnchorProblem", "ChainProblem", "ChainReport", "take_anchor", "verify_chain"]

#: How long :meth:`EventStore.anchor` waits for another session's lock on
#: the anchors by default, and at most (seconds).
DEFAULT_ANCHOR_LOCK_TIMEOUT: Final = 10.0
MAX_ANCHOR_LOCK_TIMEOUT: Final = 3600.0


class ChainProblem(msgspec.Struct, frozen=True):
    stream_id: str
    stream_version: int
    position: int
    problem: str


class Anchor(msgspec.Struct, frozen=True):
    """A digest of the global log up to ``checkpoint`` (:meth:`EventStore.anchor`).

    Publish ``digest`` outside the database: an anchor kept elsewhere shows
    any later change to the events it covers, even by the table's owner.
    """

    anchor_id: int
    checkpoint: str
    events: int
    digest: bytes
    created_at: dt.datetime


class AnchorProblem(msgspec.Struct, frozen=True):
    anchor_id: int
    checkpoint: str
    problem: str


class ChainReport(msgspec.Struct, frozen=True):
    """Result of :meth:`EventStore.verify_chain`."""

    events_checked: int
    streams_checked: int
    problems: tuple[ChainProblem, ...]
    anchors_checked: int = 0
    anchor_problems: tuple[AnchorProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.anchor_problems


def verify_chain(db: Database, stream_id: str | None = None, *, limit: int = 100) -> ChainReport:
    """Recompute the hashes of one stream or of the whole log, and check the anchors."""
    if stream_id is not None:
        check_stream_id(stream_id, "verify_chain")
    check_limit(limit, "verify_chain")
    params = {"stream_id": stream_id, "limit": limit}

    def work(_: int) -> ChainReport:
        anchors: tuple[AnchorProblem, ...] = ()
        anchors_checked = 0
        with db.connection() as conn:
            problems = conn.execute(sql.VERIFY_CHAIN, params).fetchall()
            counts = conn.execute(sql.VERIFY_COUNT, params).fetchone()
            if stream_id is None:
                rows = conn.execute(sql.VERIFY_ANCHORS, params).fetchall()
                anchors = tuple(AnchorProblem(*r) for r in rows)
                counted = conn.execute(sql.ANCHOR_COUNT).fetchone()
                anchors_checked = counted[0] if counted else 0
        assert counts is not None
        return ChainReport(
            events_checked=counts[0],
            streams_checked=counts[1],
            problems=tuple(ChainProblem(*p) for p in problems),
            anchors_checked=anchors_checked,
            anchor_problems=anchors,
        )

    report: ChainReport = db.run("verify_chain", work, stream_id=stream_id)
    return report


def take_anchor(
    db: Database, *, lock_timeout: float = DEFAULT_ANCHOR_LOCK_TIMEOUT
) -> Anchor | None:
    """Take an anchor (:meth:`EventStore.anchor`)."""
    if (
        not isinstance(lock_timeout, (int, float))
        or isinstance(lock_timeout, bool)
        or not 0 < lock_timeout <= MAX_ANCHOR_LOCK_TIMEOUT
    ):
        raise ValidationError(
            f"lock_timeout must be a number of seconds in (0, {MAX_ANCHOR_LOCK_TIMEOUT}]",
            field="lock_timeout",
            operation="anchor",
        )
    wait = f"{max(1, round(lock_timeout * 1000))}ms"

    def work(_: int) -> Anchor | None:
        with db.connection() as conn, conn.transaction():
            # A snapshot older than the latest anchor would chain onto a
            # stale one: the database refuses anything but READ COMMITTED.
            conn.execute(sql.ANCHOR_ISOLATION)
            conn.execute(sql.SET_LOCK_TIMEOUT, (wait,))
            row = conn.execute(sql.ANCHOR).fetchone()
        return None if row is None else Anchor(*row)

    try:
        anchor: Anchor | None = db.run("anchor", work)
    except StorageError as exc:
        if exc.sqlstate != "42501":
            raise
        cause = exc.__cause__
        raise StorageError(
            "anchors are taken by operators: connect as a member of utcp_operator "
            f"({first_line(cause) if cause is not None else exc.message})",
            operation="anchor",
            sqlstate=exc.sqlstate,
        ) from exc
    return anchor
