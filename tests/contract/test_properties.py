"""Property tests of the log's contract (hypothesis):

* stream versions are 1..n without gaps, positions rise, and streams read
  back intact, whatever mix of batches and expected versions was appended;
* read_all in any page sizes, resumed from checkpoints, with appends in
  between, yields the same sequence as one big read.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from eventstore import ANY, EventStore, NewEvent, StoredEvent
from tests.contract.conftest import Writer
from tests.support.horizon import wait_for_horizon

text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | text


json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


payloads = st.dictionaries(
    text.filter(lambda k: k not in {"symbol", "occurred_at"}), json_values, max_size=4
)


batches = st.lists(
    st.tuples(st.integers(0, 2), st.lists(payloads, min_size=1, max_size=5), st.booleans()),
    min_size=1,
    max_size=8,
)


def append_batches(
    writer: Writer,
    store: EventStore,
    streams: list[str],
    plan: list[tuple[int, list[dict[str, Any]], bool]],
    written: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Append the plan; ``written`` (updated and returned) is what each
    stream held before."""
    if written is None:
        written = {s: [] for s in streams}
    for index, datas, exact in plan:
        stream = streams[index]
        expected: Any = len(written[stream]) if exact else ANY
        result = writer.append(
            stream, [NewEvent("Prop", d) for d in datas], expected_version=expected
        )
        assert result.first_version == len(written[stream]) + 1
        assert result.last_version == len(written[stream]) + len(datas)
        assert len(result.positions) == len(datas)
        stored = store.read_stream(stream, from_version=result.first_version)
        assert tuple(e.position for e in stored) == result.positions
        written[stream].extend(datas)
    return written


@settings(max_examples=60)
@given(plan=batches, from_version=st.integers(1, 6), limit=st.integers(1, 6))
def test_stream_versions_are_contiguous_and_streams_read_back_intact(
    writer: Writer,
    store: EventStore,
    plan: list[tuple[int, list[dict[str, Any]], bool]],
    from_version: int,
    limit: int,
) -> None:
    run = uuid.uuid4().hex[:10]
    streams = [f"prop-{run}-{i}" for i in range(3)]
    written = append_batches(writer, store, streams, plan)
    for stream, datas in written.items():
        events = store.read_stream(stream)
        assert [e.stream_version for e in events] == list(range(1, len(datas) + 1))
        assert [e.data for e in events] == datas
        assert all(e.stream_id == stream and e.type == "Prop" for e in events)
        assert store.stream_version(stream) == len(datas)
        assert [e.position for e in events] == sorted(e.position for e in events)
        window = store.read_stream(stream, from_version=from_version, limit=limit)
        assert window == events[from_version - 1 : from_version - 1 + limit]
        if datas:
            assert store.verify_chain(stream).ok


def read_pages(
    store: EventStore, after: str | None, sizes: list[int], max_pages: int | None = None
) -> tuple[list[StoredEvent], str | None]:
    """Pages of the cycling sizes until an empty page (or max_pages)."""
    events: list[StoredEvent] = []
    pages = 0
    while max_pages is None or pages < max_pages:
        page = store.read_all(after=after, limit=sizes[pages % len(sizes)])
        pages += 1
        if not page:
            break
        assert len(page) <= sizes[(pages - 1) % len(sizes)]
        assert page[0].checkpoint != after, "read_all returned the checkpoint's own event"
        events.extend(page)
        after = page[-1].checkpoint
    return events, after


@settings(max_examples=40, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    first=batches,
    second=batches,
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    pages_between=st.integers(0, 5),
)
def test_read_all_in_any_page_sizes_yields_one_big_read(
    writer: Writer,
    store: EventStore,
    *,
    first: list[tuple[int, list[dict[str, Any]], bool]],
    second: list[tuple[int, list[dict[str, Any]], bool]],
    sizes: list[int],
    pages_between: int,
) -> None:
    run = uuid.uuid4().hex[:10]
    streams = [f"page-{run}-{i}" for i in range(3)]
    # Start where earlier examples left the log, so each example pages only
    # through its own events (test_full_log_paged_from_the_start covers START).
    wait_for_horizon(store)
    earlier = store.read_all(limit=100_000)
    start = earlier[-1].checkpoint if earlier else None
    written = append_batches(writer, store, streams, first)
    wait_for_horizon(store)
    paged, after = read_pages(store, start, sizes, pages_between)
    append_batches(writer, store, streams, second, written)  # while the reader is mid-way
    wait_for_horizon(store)
    rest, after = read_pages(store, after, sizes)
    paged += rest

    big = store.read_all(after=start, limit=100_000)
    assert store.read_all(limit=100_000) == earlier + big
    assert [e.event_id for e in paged] == [e.event_id for e in big]
    assert [e.checkpoint for e in paged] == [e.checkpoint for e in big]
    assert len({e.event_id for e in big}) == len(big)
    ours = [e for e in big if e.stream_id in streams]
    assert len(ours) == len(big) == sum(len(d) for _, d, _ in first + second)
    assert store.read_all(after=after, limit=20) == []
    # Resuming from any checkpoint yields exactly what follows it.
    for i in range(0, len(big), max(1, len(big) // 5)):
        nxt = store.read_all(after=big[i].checkpoint, limit=3)
        assert [e.event_id for e in nxt] == [e.event_id for e in big[i + 1 : i + 4]]


def test_full_log_paged_from_the_start_matches_one_big_read(
    writer: Writer, store: EventStore
) -> None:
    """After the property above, the whole log (every example's events) from
    START in small pages of varying size equals one big read."""
    stream = f"start-{uuid.uuid4().hex[:10]}"
    for i in range(30):
        writer.append(stream, [NewEvent("Prop", {"i": i})] * (1 + i % 3))
    wait_for_horizon(store)
    big = store.read_all(limit=100_000)
    for sizes in ([1000], [7], [1, 2, 3, 5, 8, 13, 20]):
        paged, _ = read_pages(store, None, sizes)
        assert [e.checkpoint for e in paged] == [e.checkpoint for e in big]
        assert paged == big
