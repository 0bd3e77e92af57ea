"""A connection killed in the middle of an append (docs/design.md §2, invariants
2 and 8): each caller's call succeeds exactly once, or fails honestly —
:class:`AppendOutcomeUnknown`, its events then stored all or not at all,
and a repeat with the same key never writing twice.

For real: the suite's database makes the insert of an event with
``"slow": true`` sleep a second (tests.support.faults.SLOW_TRIGGER), and a
superuser session terminates the writer's backend while it sleeps there,
before the commit. Other callers append concurrently with the same writer,
so a writer that groups callers into one transaction loses its whole group
to the kill: each of them must still get an honest answer.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from eventstore import NO_STREAM, AppendOutcomeUnknown, AppendResult, NewEvent
from tests.contract.conftest import ContractDb, OpenWriter, Writer
from tests.support.database import event_rows, key_rows, rows_per_event_id
from tests.support.faults import Killer
from tests.support.threads import run_threads

CALLERS = 4


def check_honest(
    writer: Writer,
    db: ContractDb,
    stream: str,
    batch: list[NewEvent],
    key: str | None,
    *,
    outcome: AppendResult | BaseException,
) -> None:
    ids = [e.event_id for e in batch]
    assert all(i is not None for i in ids)
    stored = rows_per_event_id(db.admin_dsn, ids)  # type: ignore[arg-type]
    if isinstance(outcome, AppendResult):
        # Succeeded: exactly once, and the result is what is stored.
        assert outcome.duplicate is False
        assert (outcome.stream_id, outcome.first_version, outcome.last_version) == (
            stream,
            1,
            len(batch),
        )
        assert stored == dict.fromkeys(ids, 1)
        events = writer.store.read_stream(stream)
        assert [e.event_id for e in events] == ids
        assert tuple(e.position for e in events) == outcome.positions
    else:
        # Failed: honestly (never a plain error that invites a blind retry),
        # and all or nothing.
        assert isinstance(outcome, AppendOutcomeUnknown), repr(outcome)
        assert stored in ({}, dict.fromkeys(ids, 1)), stored
        assert tuple(outcome.event_ids) == tuple(ids)
    assert event_rows(db.admin_dsn, stream_ids=[stream]) in (0, len(batch))
    if key is not None:
        # What an honest failure tells the caller to do: repeat with the key.
        again = writer.append(stream, batch, expected_version=NO_STREAM, idempotency_key=key)
        assert (again.first_version, again.last_version) == (1, len(batch))
        assert rows_per_event_id(db.admin_dsn, ids) == dict.fromkeys(ids, 1)  # type: ignore[arg-type]
        assert key_rows(db.admin_dsn, key) == 1
        if isinstance(outcome, AppendResult):
            assert again.duplicate is True and again.positions == outcome.positions


@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_a_backend_killed_mid_append_answers_each_caller_honestly(
    open_writer: OpenWriter, contract_db: ContractDb, with_key: bool
) -> None:
    application = f"utcp-kill-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    streams = [f"kill-{run}-{c}" for c in range(CALLERS)]
    keys = [f"kill-{run}-{c}" if with_key else None for c in range(CALLERS)]
    batches = [
        [
            NewEvent("OrderPlaced", {"qty": 1}, event_id=uuid.uuid4()),
            # The first caller's batch is the one caught sleeping.
            NewEvent("OrderSlow", {"slow": c == 0}, event_id=uuid.uuid4()),
            NewEvent("OrderFilled", {"qty": 1}, event_id=uuid.uuid4()),
        ]
        for c in range(CALLERS)
    ]
    outcomes: list[Any] = [None] * CALLERS
    barrier = threading.Barrier(CALLERS)

    with open_writer(application_name=application) as writer:
        killer = Killer(contract_db.admin_dsn, contract_db.name, application)
        killer.start()

        def call(c: int) -> None:
            barrier.wait(timeout=60)
            try:
                outcomes[c] = writer.append(
                    streams[c], batches[c], expected_version=NO_STREAM, idempotency_key=keys[c]
                )
            except AppendOutcomeUnknown as exc:
                outcomes[c] = exc

        run_threads(CALLERS, call)
        killer.join(timeout=60)
        assert killer.error is None, killer.error
        assert killer.killed, "the backend was never killed: the test proved nothing"

        for c in range(CALLERS):
            check_honest(writer, contract_db, streams[c], batches[c], keys[c], outcome=outcomes[c])
        assert writer.store.verify_chain().ok
