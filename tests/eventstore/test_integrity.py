"""eventstore/integrity.py without a database: saved anchors, encodings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from eventstore import ValidationError, integrity

DIGEST = "ab" * 32
LINE = {
    "anchor_id": 7,
    "checkpoint": "1234/56",
    "events": 42,
    "digest": DIGEST,
    "created_at": "2026-12-02T11:25:59.522712Z",
}


def test_the_json_line_of_anchor_is_a_saved_anchor() -> None:
    (anchor,) = integrity.parse_saved_anchors(json.dumps(LINE) + "\n", "a.json")
    assert anchor.anchor_id == 7
    assert anchor.through == (1234, 56)
    assert anchor.events == 42
    assert anchor.digest == bytes.fromhex(DIGEST)
    assert anchor.checkpoint == "1234/56"


def test_a_file_of_json_lines_gives_every_anchor_in_it() -> None:
    text = "\n".join(json.dumps({**LINE, "anchor_id": i}) for i in (1, 2, 3))
    assert [a.anchor_id for a in integrity.parse_saved_anchors(text)] == [1, 2, 3]


def test_the_human_output_of_anchor_is_a_saved_anchor_too() -> None:
    text = (
        "anchor #7: 42 events through checkpoint 1234/56\n"
        f"  sha256 {DIGEST}\n  keep this digest outside the database\n"
    )
    (anchor,) = integrity.parse_saved_anchors(text)
    assert (anchor.anchor_id, anchor.through, anchor.events) == (7, (1234, 56), 42)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "the log is empty: nothing to anchor\n",
        json.dumps({**LINE, "checkpoint": "12"}),
        json.dumps({**LINE, "digest": "zz"}),
        '{"anchor_id": 1}',
        "{not json",
    ],
)
def test_anything_else_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        integrity.parse_saved_anchors(text, "f")
    assert "\n" not in str(caught.value)


def test_the_same_id_with_two_digests_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text(json.dumps(LINE))
    two.write_text(json.dumps({**LINE, "digest": "cd" * 32}))
    with pytest.raises(ValidationError, match="two different saved anchors #7"):
        integrity.load_saved_anchors([str(one), str(two)])
    two.write_text(json.dumps(LINE))
    assert len(integrity.load_saved_anchors([str(one), str(two)])) == 1
    with pytest.raises(ValidationError, match="cannot read anchor file"):
        integrity.load_saved_anchors([str(tmp_path / "missing")])


FIELDS = {
    "event_id": "0193a1b2-0000-7000-8000-000000000001",
    "stream_id": "acct-1",
    "stream_version": "2",
    "type_": "Deposited",
    "data": '{"a": "\u00e9\u001f"}',
    "metadata": None,
    "symbol": None,
    "occurred_epoch": "1764672000.123456",
    "created_epoch": "-0.500000",
}


def test_scheme_1_joins_the_text_forms_with_unit_separators() -> None:
    content = integrity.event_content_v1(**FIELDS)
    assert content == "\x1f".join(
        [*list(FIELDS.values())[:5], "", "", "1764672000.123456", "-0.500000"]
    ).encode("utf-8")


def test_scheme_2_is_tagged_and_length_prefixed_with_microseconds() -> None:
    content = integrity.event_content_v2(**FIELDS, recorded_by="root")
    data = FIELDS["data"]
    assert data is not None
    expected = b"utcp-event-v2"
    for value in (
        FIELDS["event_id"],
        "acct-1",
        "2",
        "Deposited",
        data,
        None,
        None,
        "1764672000123456",
        "-500000",
        "root",
    ):
        if value is None:
            expected += b"\xff\xff\xff\xff"
        else:
            raw = value.encode()
            expected += len(raw).to_bytes(4, "big") + raw
    assert content == expected
    assert (
        hashlib.sha256(content).digest()
        != hashlib.sha256(integrity.event_content_v1(**FIELDS)).digest()
    )
