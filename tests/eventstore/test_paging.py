"""Paging: find_events never cuts a result silently at its limit (a Page
with the next page's cursor, exact when business times tie), its arguments
are typed and checked, and a long stream or the global log can be read a
page at a time (iter_stream, iter_all) with flat memory."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventstore import EventStore, NewEvent, Page, StoredEvent, ValidationError
from eventstore.paging import page_cursor, parse_page_cursor
from eventstore.reading import Reader

T0 = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)


def unique_type() -> str:
    return f"Tick{uuid.uuid4().hex[:10]}"


def ticks(kind: str, times: list[dt.datetime]) -> list[NewEvent]:
    return [NewEvent(kind, {"n": n, "occurred_at": t.isoformat()}) for n, t in enumerate(times)]


def all_pages(store: EventStore, limit: int, **filters: Any) -> list[list[StoredEvent]]:
    pages: list[list[StoredEvent]] = []
    after = None
    for _ in range(1000):  # bounded
        page = store.find_events(limit=limit, after=after, **filters)
        pages.append(page.items)
        if page.next is None:
            return pages
        after = page.next
    raise AssertionError("paging did not end")


def test_pages_are_exact_when_business_times_tie(store: EventStore, stream: str) -> None:
    kind = unique_type()
    # Seven events: five at one instant, two later, appended out of time order.
    times = [T0 + dt.timedelta(hours=1), T0, T0, T0, T0, T0, T0 - dt.timedelta(hours=1)]
    store.append(stream, ticks(kind, times))
    whole = store.find_events(type=kind)
    assert whole.next is None
    assert [e.occurred_at for e in whole.items] == sorted(times)
    keys = [(e.occurred_at, e.position) for e in whole.items]
    assert keys == sorted(keys)  # position breaks the ties
    for limit in (1, 2, 3, 6, 7):
        pages = all_pages(store, limit, type=kind)
        assert [e.position for page in pages for e in page] == [e.position for e in whole.items]
        assert all(len(page) == limit for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= limit  # a page with a next is never the last
    # Exactly the limit: no next page (the query looks one row further).
    assert store.find_events(type=kind, limit=7).next is None
    assert store.find_events(type=kind, limit=6).next == page_cursor(whole.items[5])


def test_cursor_round_trips_and_is_checked() -> None:
    at, position = parse_page_cursor("1709285400000001:42", "find_events")
    assert (at, position) == (T0 + dt.timedelta(microseconds=1), 42)
    assert parse_page_cursor("-62135596800000000:1", "find_events")[0].year == 1
    for bad in ("", "1:", ":1", "x:1", "1:-1", "1/1", f"1:{2**63}", "²:1", 5, None):
        with pytest.raises(ValidationError) as info:
            parse_page_cursor(bad, "find_events")
        assert info.value.field == "after"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"since": dt.datetime(2024, 1, 1)}, "since"),  # naive
        ({"until": dt.datetime(2024, 1, 1)}, "until"),
        ({"since": "2024-01-01T00:00:00Z"}, "since"),
        ({"until": 1704067200}, "until"),
        ({"type": 5}, "type"),
        ({"symbol": ["AAPL"]}, "symbol"),
        ({"category": ""}, "category"),
        ({"stream_id": b"x"}, "stream_id"),
        ({"after": "not-a-cursor"}, "after"),
        ({"after": 3}, "after"),
        ({"limit": "10"}, "limit"),
    ],
)
def test_find_events_refuses_wrong_arguments(
    store: EventStore, kwargs: dict[str, Any], field: str
) -> None:
    """A ValidationError naming the argument, before any query (not a
    database error reported as "schema not deployed")."""
    with pytest.raises(ValidationError) as info:
        store.find_events(**kwargs)
    assert info.value.field == field
    assert info.value.operation == "find_events"


class PageCounter:
    """Counts the round trips (pages) of Reader.read_stream / read_all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.sizes: list[int] = []
        original = getattr(Reader, name)

        def counted(reader: Reader, *args: Any, **kwargs: Any) -> list[StoredEvent]:
            page: list[StoredEvent] = original(reader, *args, **kwargs)
            self.sizes.append(len(page))
            return page

        monkeypatch.setattr(Reader, name, counted)


def test_iter_stream_reads_a_page_at_a_time(
    store: EventStore, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, page_size = 2_500, 100
    for start in range(0, total, 500):
        store.append(stream, [NewEvent("Counted", {"n": n}) for n in range(start, start + 500)])
    counter = PageCounter(monkeypatch, "read_stream")
    events = store.iter_stream(stream, page_size=page_size)
    assert isinstance(events, Iterator)
    first = next(events)
    assert first.stream_version == 1
    assert counter.sizes == [page_size]  # only the first page read so far
    versions = [first.stream_version, *(e.stream_version for e in events)]
    assert versions == list(range(1, total + 1))
    # 25 full pages and the empty one that says "no more"; none larger.
    assert counter.sizes == [page_size] * 25 + [0]
    # From a version, and a stream that does not divide into pages.
    counter.sizes.clear()
    tail = [e.data["n"] for e in store.iter_stream(stream, from_version=2_451, page_size=30)]
    assert tail == list(range(2_450, total))
    assert counter.sizes == [30, 20]


def test_iter_stream_checks_its_arguments_at_the_call(store: EventStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.iter_stream("", page_size=10)
    assert info.value.field == "stream_id"
    with pytest.raises(ValidationError) as info:
        store.iter_stream("s-1", page_size=0)
    assert info.value.field == "limit"
    with pytest.raises(ValidationError) as info:
        store.iter_all(after="nope")
    assert info.value.field == "after"


def test_iter_all_pages_through_the_global_log(
    store: EventStore, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = unique_type()
    store.append(stream, [NewEvent(kind, {"n": n}) for n in range(300)])
    # Wait (bounded) for the readers' horizon to pass them: another
    # database's open transaction on the shared server only delays them.
    deadline = time.monotonic() + 60
    while len(list(store.iter_all(types=[kind], page_size=1000))) < 300:
        assert time.monotonic() < deadline, "the events never became readable"
        time.sleep(0.2)
    counter = PageCounter(monkeypatch, "read_all")
    seen = [e.data["n"] for e in store.iter_all(types=[kind], page_size=50)]
    assert seen == list(range(300))
    assert counter.sizes == [50] * 6 + [0]
    # Resuming from an event's checkpoint gives exactly the rest.
    counter.sizes.clear()
    events = store.iter_all(types=[kind], page_size=50)
    head = [next(events) for _ in range(120)]
    rest = [e.data["n"] for e in store.iter_all(after=head[-1].checkpoint, types=[kind])]
    assert rest == list(range(120, 300))


def test_page_is_typed() -> None:
    page: Page[int] = Page([1, 2], "5:1")
    assert (page.items, page.next) == ([1, 2], "5:1")
    assert Page([]).next is None
