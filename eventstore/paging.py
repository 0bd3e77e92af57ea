"""Pages of the list queries (``EventStore.find_events`` and the lists
built on it): a page never ends silently at its limit, it says where the
next one starts.

The queries order by business time, then position (unique), so a page
boundary is one exact place even when many events share a time: the
cursor is ``"<occurred_at in µs since 1970-01-01 UTC>:<position>"`` of the
page's last item, and the next page starts strictly after it. Paging is
exact over the events there are; an event appended later with an earlier
business time than the cursor's is not on a later page (read the global
log, ``read_all``, for "everything, once").
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Generic, TypeVar

import msgspec

from .errors import ValidationError
from .events import StoredEvent
from .limits import MAX_BIGINT

__all__ = ["Page", "page_cursor", "parse_page_cursor"]

T = TypeVar("T")

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of a list query: ``items``, and ``next``, the cursor to pass
    as ``after=`` for the next page (None: there is nothing more)."""

    items: list[T]
    next: str | None = None


def page_cursor(event: StoredEvent) -> str:
    """The cursor of the page that ends with ``event``."""
    micros = (event.occurred_at - _EPOCH) // _MICROSECOND
    return f"{micros}:{event.position}"


def parse_page_cursor(cursor: object, operation: str) -> tuple[dt.datetime, int]:
    """``(occurred_at, position)`` of a cursor from :func:`page_cursor`."""
    if isinstance(cursor, str):
        micros, sep, position = cursor.partition(":")
        digits = micros.removeprefix("-")
        if (
            sep
            and digits.isascii()
            and digits.isdigit()
            and position.isascii()
            and position.isdigit()
            and int(position) <= MAX_BIGINT
        ):
            try:
                return _EPOCH + int(micros) * _MICROSECOND, int(position)
            except OverflowError:
                pass
    raise ValidationError(
        f"malformed page cursor {cursor!r}: pass a Page.next", field="after", operation=operation
    )
