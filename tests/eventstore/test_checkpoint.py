"""The checkpoint's one home (eventstore.checkpoint): its text form,
parsing and order, and the readers' horizon as the one SQL fragment every
query that pages the log is composed from."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import eventstore
from eventstore import HORIZON_SQL, Checkpoint, ValidationError, checkpoint_sql, visible_sql
from eventstore import sql as store_sql
from eventstore.limits import MAX_BIGINT
from projections import rebuild, runner, status
from projections import sql as projection_sql

ROOT = Path(__file__).resolve().parents[2]

tx_ids = st.integers(min_value=0, max_value=2**64 - 1)
positions = st.integers(min_value=0, max_value=MAX_BIGINT)


@given(tx_ids, positions)
def test_text_form_round_trips(tx: int, position: int) -> None:
    checkpoint = Checkpoint(tx, position)
    assert str(checkpoint) == f"{tx}/{position}"
    assert Checkpoint.parse(str(checkpoint)) == checkpoint


@given(tx_ids, positions, tx_ids, positions)
def test_checkpoints_order_like_the_log(a: int, p: int, b: int, q: int) -> None:
    """By transaction id, then position, as numbers (not as text: "9/5"
    is before "10/1")."""
    first, second = Checkpoint(a, p), Checkpoint(b, q)
    assert (first < second) == ((a, p) < (b, q))
    assert (first == second) == ((a, p) == (b, q))


def test_the_start_and_leading_zeros() -> None:
    assert Checkpoint.START == Checkpoint.parse(None) == Checkpoint(0, 0)
    assert Checkpoint.START.is_start and not Checkpoint(0, 1).is_start
    assert str(Checkpoint.START) == "0/0"
    # Decimal as written (xid8's own input would read 010 as octal).
    assert Checkpoint.parse("010/07") == Checkpoint(10, 7)
    assert Checkpoint.parse("10/7").tx_param == "10"
    assert max(["9/5", "10/1", "9/70"], key=Checkpoint.parse) == "10/1"


@pytest.mark.parametrize(
    "bad",
    ["", "/", "1/", "/1", "1", "a/1", "1/b", "-1/1", "1/-1", "1/2/3", "²/1", "1/²",
     f"{2**64}/1", f"1/{2**63}", " 1/1", 5, b"1/1"],
)  # fmt: skip
def test_malformed_checkpoints_are_validation_errors(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        Checkpoint.parse(bad)  # type: ignore[arg-type]
    assert info.value.field == "after"
    with pytest.raises(ValidationError) as info:
        Checkpoint.parse(bad, field="until", operation="project")  # type: ignore[arg-type]
    assert (info.value.field, info.value.operation) == ("until", "project")


def test_checkpoint_is_public() -> None:
    for name in (
        "Checkpoint",
        "HORIZON_SQL",
        "visible_sql",
        "checkpoint_sql",
        "Page",
        "SettingsWarning",
    ):
        assert name in eventstore.__all__


def test_the_horizon_is_written_once() -> None:
    """Every query that pages the log or counts what readers can see is
    composed from visible_sql; no module spells the horizon itself."""
    assert visible_sql("e.tx_id") == f"e.tx_id < {HORIZON_SQL}"
    for query in (store_sql.READ_ALL, store_sql.READ_ALL_TYPES, store_sql.STATUS):
        assert HORIZON_SQL in query
    assert visible_sql() in projection_sql.HEAD
    assert visible_sql("e.tx_id") in projection_sql.STATUS_LAG
    assert checkpoint_sql() in store_sql.EVENT_COLUMNS
    assert checkpoint_sql("checkpoint_tx", "checkpoint_position") in projection_sql.READ_CHECKPOINT
    for module in ("eventstore", "projections", "trading", "storectl"):
        for path in (ROOT / module).glob("*.py"):
            if path.name == "checkpoint.py":
                continue
            text = path.read_text()
            assert "pg_snapshot_xmin" not in text, path
            assert "::text || '/' ||" not in text, path


def test_the_projections_use_the_one_parser() -> None:
    for module in (runner, status, rebuild):
        source = inspect.getsource(module)
        assert "def parse_checkpoint" not in source
        assert "def checkpoint_order" not in source
